//! A split virtqueue served by `virtq`, fed by the testkit's driver-side model.
//!
//! Guest RAM is a `TestMemory`; the "driver" publishes chains of (readable request, writable
//! response) buffers; the device runs the standard drain loop (`Queue::drain`), reads each
//! request through a `ChainReader`, writes its upper-case form through the same walk's
//! `ChainWriter`, and completes the chain with exactly the bytes it wrote. The program prints
//! what flowed in both directions and the interrupt decisions.
//!
//! Run: `cargo run --release --example split_demo`

use virtq::io::ChainReader;
use virtq::{Completion, DrainReport, Features, Queue};
use virtq_testkit::{SplitDriver, TestMemory};

/// The device: read the readable part, write its upper-case form into the writable part.
fn serve(q: &mut Queue, mem: &TestMemory) -> DrainReport {
    q.drain(mem, 64, |chain| {
        let mut reader: ChainReader<'_, _> = ChainReader::new(mem, &chain);
        let mut request = [0u8; 256]; // a fixed scratch buffer: longer requests are cut (H21)
        let Ok(n) = reader.read(&mut request) else {
            return Completion::Used(0); // malformed chain: complete it empty
        };
        let mut writer = reader.into_writer();
        request[..n].make_ascii_uppercase();
        // A short writable part just takes fewer bytes; bytes_written stays exact.
        let _ = writer.write(&request[..n]);
        Completion::Used(writer.bytes_written())
    })
    .expect("a well-formed driver never breaks the queue")
}

fn main() {
    let mem = TestMemory::new(&[(0x4000_0000, 0x10_0000)]);
    let size = 8;
    let mut drv = SplitDriver::new(&mem, size, 0x4000_1000, 0x4000_2000, 0x4000_3000);
    let mut q = drv.queue(size, Features::EVENT_IDX);
    q.check_rings(&mem).expect("rings inside guest RAM");

    let messages = [
        "hello, virtq",
        "split rings",
        "no_std and allocation-free",
        "hostile guests welcome",
    ];
    let response_at = |i: usize| 0x4001_0800 + i as u64 * 0x1000;
    let mut served = 0;
    for round in 0..3 {
        let mut heads = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let request_at = response_at(i) - 0x800;
            mem.poke(request_at, m.as_bytes());
            let head = drv.add_chain(&[
                (request_at, m.len() as u32, false),
                (response_at(i), 64, true),
            ]);
            heads.push(head.expect("free descriptors"));
        }
        // The driver wants one interrupt, when its last request is done (EVENT_IDX).
        drv.set_used_event(drv.avail_idx.wrapping_sub(1));
        let report = serve(&mut q, &mem);
        println!(
            "round {round}: device took {} chains, published {}, interrupt the guest: {}",
            report.processed, report.completed, report.notify
        );
        while let Some((head, len)) = drv.pop_used() {
            let i = heads
                .iter()
                .position(|&h| u32::from(h) == head)
                .expect("a head we published");
            let text =
                String::from_utf8_lossy(&mem.peek(response_at(i), len as usize)).into_owned();
            println!(
                "  head {head}: {:?} -> {len:>2} bytes {text:?}",
                messages[i]
            );
            served += 1;
        }
    }
    println!(
        "{served} requests served; avail.idx {}, used.idx {}, in flight {}",
        drv.avail_idx,
        drv.used_idx(),
        q.in_flight()
    );
}
