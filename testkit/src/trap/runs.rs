//! Guest workloads for trap tests: what `virtio-drivers`' blk, net and console drivers do over
//! any transport (virtio-mmio or virtio-pci behind a trap window), every byte they move checked.
//!
//! The transport-specific parts come in as closures: `hypervisor` runs the device on the
//! kicks the trap recorded ([`NotifyMode::Deferred`](virtq::transport::NotifyMode)) and says
//! whether an interrupt reached the guest; `interrupt` is the guest's interrupt handler entry
//! (read the ISR for INTx, check the latched MSI-X vector, ...). Each function panics with
//! `ctx` in the message when the guest sees something wrong.

use std::time::{Duration, Instant};

use virtio_drivers::Error as DrvError;
use virtio_drivers::Hal;
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::Transport;

use crate::devices::net::MAC;

/// Upper bound on rounds of a guest interrupt loop before a run declares a stall.
pub const MAX_ROUNDS: usize = 100;

/// Test data for `len` bytes at `block`, different for every `salt`.
pub fn pattern(block: usize, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (block as u8).wrapping_mul(31) ^ salt.rotate_left(3))
        .collect()
}

/// Frame `i` of a loopback run, `len` bytes: destination [`MAC`], a per-frame source and
/// payload.
pub fn frame(i: usize, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, i as u8]);
    f[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    for (k, b) in f[14..].iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(7) ^ i as u8;
    }
    f
}

/// blk through the blocking API on a disk of `sectors` sectors: six writes of 1–8 sectors,
/// each read back and compared with the guest's data and with `disk(offset, len)` (the
/// device's disk), a flush, GET_ID (`virtq-ram0`) and a read past the end that fails with its
/// buffer zero-filled. 15 requests, one of them an I/O error.
pub fn blk_blocking<H: Hal, T: Transport>(
    blk: &mut VirtIOBlk<H, T>,
    sectors: u64,
    disk: impl Fn(usize, usize) -> Vec<u8>,
    ctx: &str,
) {
    assert_eq!(blk.capacity(), sectors, "{ctx}: device configuration");
    let last = usize::try_from(sectors).expect("small disk");
    let mut written = Vec::new();
    for (i, n) in [1usize, 2, 3, 8, 1, 4].into_iter().enumerate() {
        let block = i * 97 % (last - 8);
        let data = pattern(block, n * 512, i as u8);
        blk.write_blocks(block, &data).unwrap();
        written.push((block, data));
    }
    for (block, data) in &written {
        let mut back = vec![0u8; data.len()];
        blk.read_blocks(*block, &mut back).unwrap();
        assert_eq!(&back, data, "{ctx}: block {block}");
        assert_eq!(
            &disk(block * 512, data.len()),
            data,
            "{ctx}: disk at {block}"
        );
    }
    blk.flush().unwrap();
    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id).unwrap();
    assert_eq!(&id[..n], b"virtq-ram0", "{ctx}");
    let mut buf = [0xEEu8; 1024];
    assert_eq!(
        blk.read_blocks(last - 1, &mut buf),
        Err(DrvError::IoError),
        "{ctx}"
    );
    assert!(buf.iter().all(|&b| b == 0), "{ctx}: error data zero-filled");
}

/// blk through the non-blocking API with the device run by the hypervisor: four rounds
/// (write, read back, write, read back) of four 1 KiB requests submitted at once; after
/// each `hypervisor()` that interrupted the guest, `interrupt(blk)` and then every completion
/// in the used ring. The data read back is compared with what was written.
pub fn blk_interrupt_loop<H: Hal, T: Transport>(
    blk: &mut VirtIOBlk<H, T>,
    mut hypervisor: impl FnMut() -> bool,
    mut interrupt: impl FnMut(&mut VirtIOBlk<H, T>),
    ctx: &str,
) {
    const K: usize = 4;
    let mut reqs: Vec<BlkReq> = (0..K).map(|_| BlkReq::default()).collect();
    let mut resps: Vec<BlkResp> = (0..K).map(|_| BlkResp::default()).collect();
    for round in 0..4 {
        let writing = round % 2 == 0;
        let mut bufs: Vec<Vec<u8>> = (0..K)
            .map(|i| {
                if writing {
                    pattern(i * 2, 1024, round)
                } else {
                    vec![0u8; 1024]
                }
            })
            .collect();
        let mut tokens = [None; K];
        for i in 0..K {
            // SAFETY: the request, buffer and response stay untouched until completed.
            let tok = unsafe {
                if writing {
                    blk.write_blocks_nb(i * 2, &mut reqs[i], &bufs[i], &mut resps[i])
                } else {
                    blk.read_blocks_nb(i * 2, &mut reqs[i], &mut bufs[i], &mut resps[i])
                }
            }
            .unwrap();
            tokens[i] = Some(tok);
        }
        assert_eq!(
            blk.peek_used(),
            None,
            "{ctx}: nothing runs before the hypervisor"
        );
        let mut done = 0;
        for _ in 0..MAX_ROUNDS {
            if done == K {
                break;
            }
            if !hypervisor() {
                continue;
            }
            interrupt(blk);
            while let Some(tok) = blk.peek_used() {
                let i = tokens
                    .iter()
                    .position(|t| *t == Some(tok))
                    .expect("known token");
                tokens[i] = None;
                // SAFETY: the same request, buffer and response as at submission.
                unsafe {
                    if writing {
                        blk.complete_write_blocks(tok, &reqs[i], &bufs[i], &mut resps[i])
                    } else {
                        blk.complete_read_blocks(tok, &reqs[i], &mut bufs[i], &mut resps[i])
                    }
                }
                .unwrap();
                assert_eq!(resps[i].status(), RespStatus::OK, "{ctx}");
                done += 1;
            }
        }
        assert_eq!(done, K, "{ctx}: round {round} stalled");
        if !writing {
            for (i, b) in bufs.iter().enumerate() {
                assert_eq!(b, &pattern(i * 2, 1024, round - 1), "{ctx}: round {round}");
            }
        }
    }
}

/// net loopback over `VirtIONetRaw`: four receive buffers posted up front, `frames` frames of
/// varied length transmitted two at a time; after each `hypervisor()` that interrupted the
/// guest, `interrupt(net)`, then every finished transmission is completed and every received
/// frame checked byte for byte and its buffer posted again.
pub fn net_loopback<H: Hal, T: Transport, const QS: usize>(
    net: &mut VirtIONetRaw<H, T, QS>,
    frames: usize,
    mut hypervisor: impl FnMut() -> bool,
    mut interrupt: impl FnMut(&mut VirtIONetRaw<H, T, QS>),
    ctx: &str,
) {
    const RX: usize = 4;
    const BUF: usize = 2048;
    assert_eq!(net.mac_address(), MAC, "{ctx}: device configuration");
    let len = |i: usize| 60 + i * 53 % 1400;
    let mut rx_bufs = vec![[0u8; BUF]; RX];
    let mut rx_tokens = [0u16; RX];
    for (i, b) in rx_bufs.iter_mut().enumerate() {
        // SAFETY: the buffer is not touched until its reception completes.
        rx_tokens[i] = unsafe { net.receive_begin(b) }.unwrap();
    }
    let mut tx: Vec<(u16, Vec<u8>)> = Vec::new();
    let (mut sent, mut received) = (0usize, 0usize);
    let mut rounds = 0;
    while received < frames {
        rounds += 1;
        assert!(rounds < MAX_ROUNDS, "{ctx}: stalled at {received}/{frames}");
        while sent < frames && tx.len() < 2 {
            let f = frame(sent, len(sent));
            let mut buf = vec![0u8; 12 + f.len()];
            let hdr = net.fill_buffer_header(&mut buf).unwrap();
            buf.truncate(hdr + f.len());
            buf[hdr..].copy_from_slice(&f);
            // SAFETY: `buf` is kept in `tx` untouched until its transmission completes.
            let tok = unsafe { net.transmit_begin(&buf) }.unwrap();
            tx.push((tok, buf));
            sent += 1;
        }
        if !hypervisor() {
            continue;
        }
        interrupt(net);
        while let Some(tok) = net.poll_transmit() {
            let i = tx.iter().position(|(t, _)| *t == tok).expect("known token");
            let (_, buf) = tx.remove(i);
            // SAFETY: the buffer passed to transmit_begin for this token.
            unsafe { net.transmit_complete(tok, &buf) }.unwrap();
        }
        while let Some(tok) = net.poll_receive() {
            let i = rx_tokens
                .iter()
                .position(|t| *t == tok)
                .expect("known token");
            // SAFETY: the buffer passed to receive_begin for this token.
            let (hdr, n) = unsafe { net.receive_complete(tok, &mut rx_bufs[i]) }.unwrap();
            let want = frame(received, len(received));
            assert_eq!(
                &rx_bufs[i][hdr..hdr + n],
                &want[..],
                "{ctx}: frame {received}"
            );
            received += 1;
            // SAFETY: as at the first post.
            rx_tokens[i] = unsafe { net.receive_begin(&mut rx_bufs[i]) }.unwrap();
        }
    }
    assert!(tx.is_empty(), "{ctx}: every transmission completed");
}

/// Bytes [`console_echo`] transmits: 1 + 13 + 6000.
pub const CONSOLE_ECHO_BYTES: usize = 1 + 13 + 6000;

/// console echo against a device running elsewhere (an I/O thread): a single byte, a line,
/// and a message longer than the driver's 4 KiB receive buffer, each sent with the blocking
/// API and read back; `interrupt(con)` runs before each receive attempt. Fails after 10 s
/// without progress.
pub fn console_echo<H: Hal, T: Transport>(
    con: &mut VirtIOConsole<H, T>,
    mut interrupt: impl FnMut(&mut VirtIOConsole<H, T>),
    ctx: &str,
) {
    let size = con.size().unwrap().unwrap();
    assert_eq!(
        (size.columns, size.rows),
        (80, 25),
        "{ctx}: device configuration"
    );
    let long: Vec<u8> = (0..6000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let messages: [&[u8]; 3] = [b"x", b"hello, virtq\n", &long];
    let deadline = Instant::now() + Duration::from_secs(10);
    for msg in messages {
        if let [b] = msg {
            con.send(*b).unwrap();
        } else {
            con.send_bytes(msg).unwrap();
        }
        let mut echoed = Vec::new();
        while echoed.len() < msg.len() {
            interrupt(con);
            match con.recv(true).unwrap() {
                Some(b) => echoed.push(b),
                None => {
                    assert!(Instant::now() < deadline, "{ctx}: echo stalled");
                    std::thread::yield_now();
                }
            }
        }
        assert_eq!(echoed, msg, "{ctx}");
    }
    assert_eq!(con.recv(true).unwrap(), None, "{ctx}: nothing extra echoed");
}
