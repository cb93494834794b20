//! The PCI transport's outcome carries the same events as MMIO's (issue 15): a queue refused
//! at enable, and queue work the device's budget did not cover (H17), which the transport
//! reports instead of running the device again.

mod pci_driver;

use pci_driver::{BAR_BASE, PciDriver, attach};
use virtq::Features;
use virtq::transport::Events;
use virtq::transport::pci::{NO_VECTOR, PciEvents};
use virtq_testkit::devices::BlkDevice;
use virtq_testkit::{SplitDriver, TestMemory};

const V1: u64 = Features::VERSION_1.bits();

#[test]
fn queue_refused_at_enable_is_an_event() {
    // The former name still works.
    assert_eq!(PciEvents::QUEUE_REFUSED, Events::QUEUE_REFUSED);
    let mem = TestMemory::m0();
    let f = attach::<_, _, 1, 2>(BlkDevice::new(8, Features::empty(), 16), &mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).expect("probe");
    assert_eq!(d.negotiate(V1), Some(V1));
    f.irq.borrow_mut().events = Events::empty();
    // The used ring in the hole of map M0.
    d.setup_queue(0, 16, (0x1000, 0x2000, 0x10_0000), NO_VECTOR);
    assert_eq!(
        f.irq.borrow().events,
        Events::QUEUE_REFUSED | Events::NEEDS_RESET
    );
    assert!(f.t.borrow().queue_setup_error(0).is_some());
}

#[test]
fn work_past_the_budget_is_reported_not_run() {
    let mem = TestMemory::m0();
    let dev = BlkDevice::new(8, Features::empty(), 16).with_budget(4);
    let f = attach::<_, _, 1, 2>(dev, &mem);
    let d = PciDriver::probe(f.clone(), BAR_BASE).expect("probe");
    assert_eq!(d.negotiate(V1), Some(V1));
    let mut drv = SplitDriver::standard(&mem, 16);
    d.setup_queue(0, 16, (drv.desc, drv.avail, drv.used), NO_VECTOR);
    d.driver_ok();
    for _ in 0..10 {
        drv.add_chain(&[(0x8_0000, 1, true)]).unwrap();
    }
    f.irq.borrow_mut().events = Events::empty();
    d.notify(0);
    assert_eq!(f.t.borrow().device().stats.requests, 4, "one budget");
    assert!(f.irq.borrow().events.contains(Events::KICKS));
    let mut rounds = 0;
    loop {
        let mut kicked = Vec::new();
        f.t.borrow_mut().take_kicks(|q| kicked.push(q));
        if kicked.is_empty() {
            break;
        }
        rounds += 1;
        for q in kicked {
            let out = f.t.borrow_mut().process_queue(q);
            assert_eq!(
                out.events.contains(Events::KICKS),
                f.t.borrow().device().stats.requests < 10
            );
            f.deliver(out);
        }
    }
    assert_eq!(rounds, 2);
    assert_eq!(f.t.borrow().device().stats.requests, 10);
    let mut used = 0;
    while drv.pop_used().is_some() {
        used += 1;
    }
    assert_eq!(used, 10);
}
