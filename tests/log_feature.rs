//! The `log` feature: the crate's messages reach the `log` crate.
//!
//! A tiny `log::Log` captures every record; a split and a packed queue that stop on a fatal
//! guest error (hostile class H1, an `avail.idx` overrun, and a packed chain whose next
//! descriptor was never made available) must each leave one warning naming the error, and only one, because the error is
//! sticky and later calls return it without logging again.
//!
//! Run: `cargo test --features log --test log_feature`.

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use virtq::{Features, QueueError};
use virtq_testkit::{PackedDriver, SplitDriver, TestMemory};

/// Every record the library logged: (level, target, message).
static RECORDS: Mutex<Vec<(Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        RECORDS.lock().unwrap().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Install the capturing logger (once per test binary) and return the records logged while
/// `f` ran. The tests share one logger, so they run one at a time under this lock.
fn captured(f: impl FnOnce()) -> Vec<(Level, String, String)> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(LevelFilter::Trace);
    RECORDS.lock().unwrap().clear();
    f();
    std::mem::take(&mut *RECORDS.lock().unwrap())
}

fn warnings(records: &[(Level, String, String)]) -> Vec<&(Level, String, String)> {
    records.iter().filter(|r| r.0 <= Level::Warn).collect()
}

#[test]
fn split_queue_stopping_on_a_fatal_error_logs_one_warning() {
    let records = captured(|| {
        let mem = TestMemory::m0();
        let mut drv = SplitDriver::standard(&mem, 8);
        let mut q = drv.queue(8, Features::empty());
        // A good chain first: trace output, but no warning.
        drv.add_chain(&[(0x8_0000, 64, true)]).unwrap();
        let c = q.pop_avail(&mem).unwrap().unwrap();
        q.push_used(&mem, c.head_index(), 0).unwrap();
        assert!(warnings(&RECORDS.lock().unwrap()).is_empty());
        // H1: avail.idx 9 entries past the device's cursor on a ring of 8.
        drv.set_avail_idx(drv.avail_idx.wrapping_add(9));
        let err = q.pop_avail(&mem).unwrap_err();
        assert!(matches!(err, QueueError::AvailIdxOverrun { .. }));
        // Sticky: the same error again, not logged again.
        assert_eq!(q.pop_avail(&mem).unwrap_err(), err);
    });
    let warns = warnings(&records);
    assert_eq!(warns.len(), 1, "{records:?}");
    let (level, target, msg) = warns[0];
    assert_eq!(*level, Level::Warn);
    assert!(target.starts_with("virtq"), "{target}");
    assert!(msg.contains("queue stopped"), "{msg}");
    assert!(
        msg.contains("avail.idx 10"),
        "the error's Display is in the message: {msg}"
    );
    // The popped head was logged at trace level, with its value.
    assert!(
        records
            .iter()
            .any(|r| r.0 == Level::Trace && r.2.contains("popped head 0")),
        "{records:?}"
    );
}

#[test]
fn packed_queue_stopping_on_a_fatal_error_logs_one_warning() {
    let records = captured(|| {
        let mem = TestMemory::m0();
        let mut drv = PackedDriver::standard(&mem, 4);
        let mut q = drv.queue(4, Features::RING_PACKED);
        // A head with NEXT whose next slot the driver never made available: the chain is
        // incomplete, a fatal ring error (hostile class H15).
        drv.publish_raw(0, &[(0x8_0000, 16, 1)]);
        let err = q.pop_avail(&mem).unwrap_err();
        assert!(err.is_fatal(), "{err:?}");
        assert_eq!(q.pop_avail(&mem).unwrap_err(), err);
    });
    let warns = warnings(&records);
    assert_eq!(warns.len(), 1, "{records:?}");
    assert!(warns[0].2.contains("queue stopped"), "{records:?}");
}
