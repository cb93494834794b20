//! A guest memory whose answers follow a fixed script, for proving that loops are bounded by
//! counters the device owns and never by the guest's timing.
//!
//! [`Scripted`] wraps any [`GuestMemory`]. For the 16-bit words given a script, the `n`-th
//! `load_u16` of that word returns the script's `n`-th value (cyclically), as if a guest vCPU
//! toggled the word between every two device reads; every other access goes to the inner
//! memory. The run is the same every time, so a livelock is reproduced, not sampled. A total
//! access limit turns a loop that would never end into a test failure with a message, not a
//! hang.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use virtq::{Barrier, GuestAddress, GuestMemory, MemoryError};

/// A memory whose scripted words change between every two reads. See the module docs.
pub struct Scripted<M> {
    inner: M,
    scripts: Mutex<HashMap<u64, (Vec<u16>, usize)>>,
    accesses: AtomicU64,
    limit: u64,
}

impl<M: GuestMemory> Scripted<M> {
    /// Wrap `inner`; the run fails (panics with a message) after `limit` accesses.
    pub fn new(inner: M, limit: u64) -> Self {
        Self {
            inner,
            scripts: Mutex::new(HashMap::new()),
            accesses: AtomicU64::new(0),
            limit,
        }
    }

    /// From now on, the `n`-th 16-bit load of the word at `addr` returns
    /// `values[n % values.len()]` (an empty script removes it).
    pub fn script(&self, addr: u64, values: &[u16]) {
        let mut s = self.scripts.lock().unwrap();
        if values.is_empty() {
            s.remove(&addr);
        } else {
            s.insert(addr, (values.to_vec(), 0));
        }
    }

    /// Guest-memory accesses made so far (loads, stores and copies; not range checks or
    /// fences).
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    /// How many times the scripted word at `addr` was read.
    pub fn reads_of(&self, addr: u64) -> usize {
        self.scripts.lock().unwrap().get(&addr).map_or(0, |s| s.1)
    }

    /// The wrapped memory.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    fn count(&self) {
        let n = self.accesses.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(
            n <= self.limit,
            "{n} guest accesses: the loop is not bounded by the device (limit {})",
            self.limit
        );
    }
}

impl<M: GuestMemory> GuestMemory for Scripted<M> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.count();
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.count();
        self.inner.write(addr, buf)
    }

    fn load_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.count();
        if let Some((values, n)) = self.scripts.lock().unwrap().get_mut(&addr.0) {
            let v = values[*n % values.len()];
            *n += 1;
            return Ok(v);
        }
        self.inner.load_u16(addr)
    }

    fn store_u16(&self, addr: GuestAddress, value: u16) -> Result<(), MemoryError> {
        self.count();
        self.inner.store_u16(addr, value)
    }

    fn check_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.inner.check_range(addr, len)
    }

    fn check_u16_range(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        self.inner.check_u16_range(addr, len)
    }

    fn fence(&self, barrier: Barrier) {
        self.inner.fence(barrier);
    }
}
