//! Shared input format of the virtq fuzz targets, and its encoder (used by the seed generator
//! `examples/gen_corpus.rs`).
//!
//! Inputs are plain little-endian byte streams read through [`arbitrary::Unstructured`]
//! (integers are `from_le_bytes`, missing bytes read as zero), so a seed can be written by hand
//! with [`Enc`] and libFuzzer's byte mutations map onto meaningful field changes.
//!
//! # Guest memory map (every target)
//!
//! | range | use |
//! |---|---|
//! | `[0, 0x8000)` | RAM0: descriptor table at [`DESC`], available ring at [`AVAIL`], used ring at [`USED`], buffers and indirect tables above [`BUFS`] |
//! | `[0x8000, 0x10000)` | hole (the device's MMIO window) |
//! | `[0x10000, 0x12000)` | RAM1 |

use arbitrary::Unstructured;
use virtq::wire::split_layout as layout;
use virtq_testkit::TestMemory;

/// RAM regions `(base, len)`.
pub const RAM: [(u64, u64); 2] = [(0, 0x8000), (0x10000, 0x2000)];
/// Standard descriptor table address.
pub const DESC: u64 = 0x1000;
/// Standard available ring address.
pub const AVAIL: u64 = 0x2000;
/// Standard used ring address.
pub const USED: u64 = 0x3000;
/// Start of the buffer / indirect-table area.
pub const BUFS: u64 = 0x4000;
/// Where the input's memory image is copied.
pub const IMAGE_AT: u64 = DESC;
/// Largest image (up to the end of RAM0).
pub const IMAGE_MAX: usize = 0x7000;
/// Most operations per input.
pub const MAX_OPS: usize = 512;

/// Fresh guest RAM with the fuzz memory map.
pub fn new_memory() -> TestMemory {
    TestMemory::new(&RAM)
}

/// Whether `[addr, addr + len)` lies in one RAM region of [`RAM`] (so the driver side may poke
/// it without panicking).
pub fn in_ram(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    RAM.iter().any(|&(b, l)| b <= addr && end <= b + l)
}

/// Queue configuration chosen by the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Queue size (a power of two, 1..=128).
    pub size: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl Config {
    /// The standard placement.
    pub const fn standard(size: u16, indirect: bool) -> Self {
        Self {
            size,
            indirect,
            event_idx: false,
            desc: DESC,
            avail: AVAIL,
            used: USED,
        }
    }

    /// Bytes of the used ring, `[used, used + used_len())`.
    pub fn used_len(&self) -> u64 {
        layout::used_ring_bytes(self.size)
    }

    /// Decode: `cfg: u8` (bits 0-2 log2 size, 3 INDIRECT, 4 hostile placement, 5 EVENT_IDX,
    /// 6 used ring near 2^64), then with bit 4 three `u16` addresses.
    pub fn decode(u: &mut Unstructured<'_>) -> Self {
        let cfg: u8 = u.arbitrary().unwrap_or(0);
        let mut c = Self::standard(1 << (cfg & 7), cfg & 8 != 0);
        c.event_idx = cfg & 32 != 0;
        if cfg & 16 != 0 {
            c.desc = u64::from(u.arbitrary::<u16>().unwrap_or(0));
            c.avail = u64::from(u.arbitrary::<u16>().unwrap_or(0));
            c.used = u64::from(u.arbitrary::<u16>().unwrap_or(0));
        }
        if cfg & 64 != 0 {
            c.used = c.used.wrapping_add(0xFFFF_FFFF_FFFF_0000);
        }
        c
    }

    /// Encode the standard placement (what [`decode`](Self::decode) reads back).
    pub fn encode(&self, e: &mut Enc) {
        let shift = self.size.trailing_zeros() as u8;
        let standard = self.desc == DESC && self.avail == AVAIL && self.used == USED;
        let cfg = shift
            | if self.indirect { 8 } else { 0 }
            | if standard { 0 } else { 16 }
            | if self.event_idx { 32 } else { 0 };
        e.u8(cfg);
        if !standard {
            e.u16(self.desc as u16);
            e.u16(self.avail as u16);
            e.u16(self.used as u16);
        }
    }
}

/// Decode the memory image (`len: u16`, then `len` bytes, capped at [`IMAGE_MAX`]) and copy it
/// to [`IMAGE_AT`].
pub fn decode_image(u: &mut Unstructured<'_>, mem: &TestMemory) {
    let n = usize::from(u.arbitrary::<u16>().unwrap_or(0)).min(IMAGE_MAX);
    let n = n.min(u.len());
    if let Ok(bytes) = u.bytes(n) {
        mem.poke(IMAGE_AT, bytes);
    }
}

/// A split descriptor as raw fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Flags (NEXT=1, WRITE=2, INDIRECT=4).
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl RawDesc {
    /// The 16 wire bytes.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    fn decode(u: &mut Unstructured<'_>) -> Self {
        Self {
            addr: u.arbitrary().unwrap_or(0),
            len: u.arbitrary().unwrap_or(0),
            flags: u.arbitrary().unwrap_or(0),
            next: u.arbitrary().unwrap_or(0),
        }
    }

    fn encode(&self, e: &mut Enc) {
        e.u64(self.addr);
        e.u32(self.len);
        e.u16(self.flags);
        e.u16(self.next);
    }
}

/// One step of a split-ring scenario: a device-side queue operation or a guest-side mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `pop_avail`.
    Pop,
    /// Walk held chain `i % held` with `iter`.
    Walk(u8),
    /// `copy_into` held chain `i % held`, capacity 4 (`small`) or 128.
    CopyInto(u8, bool),
    /// `push_used` held chain `i % held` with `len` clamped to its writable bytes.
    PushUsed(u8, u32),
    /// `add_used` held chain `i % held` (not published).
    AddUsed(u8, u32),
    /// `publish_used`.
    Publish,
    /// `push_used` with an arbitrary head (a device bug: must be refused without writes unless
    /// that head really is in flight).
    PushBogus(u16, u32),
    /// `reset` and reconfigure the same rings.
    Reset,
    /// `mark_broken`.
    MarkBroken,
    /// `has_pending`.
    HasPending,
    /// Guest: write descriptor `i % size` of the table.
    WriteDesc(u16, RawDesc),
    /// Guest: write descriptor `i % 256` of the indirect-table area at [`BUFS`].
    WriteTableEntry(u8, RawDesc),
    /// Guest: write bytes at `off % 0x8000`.
    WriteBytes(u16, Vec<u8>),
    /// Guest: put `head` in the next ring slot and increment `avail.idx`.
    PublishHead(u16),
    /// Guest: store a raw `avail.idx`.
    SetAvailIdx(u16),
    /// Guest: change descriptor `i % size` right after the device's first read of it (TOCTOU).
    FlipDesc(u16, RawDesc),
    /// Guest: change ring slot `i % size` right after the device's first read of it.
    FlipRing(u16, u16),
    /// Guest: change `avail.idx` right after the device's first read of it.
    FlipAvailIdx(u16),
    /// `needs_notification` (EVENT_IDX / NO_INTERRUPT decision).
    NeedsNotification,
    /// `enable_notification` (true) or `disable_notification` (false).
    SetNotification(bool),
    /// Guest: write the avail flags (`v`) and `used_event` (`w`).
    SetSuppression(u16, u16),
    /// `drain` with budget `b % 8`; `mode` picks each chain's completion (used, deferred,
    /// broken).
    Drain(u8, u8),
}

/// Number of op codes.
const OPS: u8 = 22;

impl Op {
    /// Decode one op.
    pub fn decode(u: &mut Unstructured<'_>) -> Self {
        let code = u.arbitrary::<u8>().unwrap_or(0) % OPS;
        let b = |u: &mut Unstructured<'_>| u.arbitrary::<u8>().unwrap_or(0);
        let h = |u: &mut Unstructured<'_>| u.arbitrary::<u16>().unwrap_or(0);
        let w = |u: &mut Unstructured<'_>| u.arbitrary::<u32>().unwrap_or(0);
        match code {
            0 => Self::Pop,
            1 => Self::Walk(b(u)),
            2 => {
                let i = b(u);
                Self::CopyInto(i, b(u) & 1 != 0)
            }
            3 => Self::PushUsed(b(u), w(u)),
            4 => Self::AddUsed(b(u), w(u)),
            5 => Self::Publish,
            6 => Self::PushBogus(h(u), w(u)),
            7 => Self::Reset,
            8 => Self::MarkBroken,
            9 => Self::HasPending,
            10 => Self::WriteDesc(h(u), RawDesc::decode(u)),
            11 => Self::WriteTableEntry(b(u), RawDesc::decode(u)),
            12 => {
                let off = h(u);
                let n = usize::from(b(u) % 64).min(u.len());
                Self::WriteBytes(off, u.bytes(n).unwrap_or(&[]).to_vec())
            }
            13 => Self::PublishHead(h(u)),
            14 => Self::SetAvailIdx(h(u)),
            15 => Self::FlipDesc(h(u), RawDesc::decode(u)),
            16 => Self::FlipRing(h(u), h(u)),
            17 => Self::FlipAvailIdx(h(u)),
            18 => Self::NeedsNotification,
            19 => Self::SetNotification(b(u) & 1 != 0),
            20 => Self::SetSuppression(h(u), h(u)),
            _ => Self::Drain(b(u), b(u)),
        }
    }

    /// Encode one op (what [`decode`](Self::decode) reads back).
    pub fn encode(&self, e: &mut Enc) {
        match self {
            Self::Pop => e.u8(0),
            Self::Walk(i) => {
                e.u8(1);
                e.u8(*i);
            }
            Self::CopyInto(i, small) => {
                e.u8(2);
                e.u8(*i);
                e.u8(u8::from(*small));
            }
            Self::PushUsed(i, l) => {
                e.u8(3);
                e.u8(*i);
                e.u32(*l);
            }
            Self::AddUsed(i, l) => {
                e.u8(4);
                e.u8(*i);
                e.u32(*l);
            }
            Self::Publish => e.u8(5),
            Self::PushBogus(h, l) => {
                e.u8(6);
                e.u16(*h);
                e.u32(*l);
            }
            Self::Reset => e.u8(7),
            Self::MarkBroken => e.u8(8),
            Self::HasPending => e.u8(9),
            Self::WriteDesc(i, d) => {
                e.u8(10);
                e.u16(*i);
                d.encode(e);
            }
            Self::WriteTableEntry(i, d) => {
                e.u8(11);
                e.u8(*i);
                d.encode(e);
            }
            Self::WriteBytes(off, bytes) => {
                e.u8(12);
                e.u16(*off);
                e.u8(bytes.len().min(63) as u8);
                e.bytes(&bytes[..bytes.len().min(63)]);
            }
            Self::PublishHead(h) => {
                e.u8(13);
                e.u16(*h);
            }
            Self::SetAvailIdx(v) => {
                e.u8(14);
                e.u16(*v);
            }
            Self::FlipDesc(i, d) => {
                e.u8(15);
                e.u16(*i);
                d.encode(e);
            }
            Self::FlipRing(i, v) => {
                e.u8(16);
                e.u16(*i);
                e.u16(*v);
            }
            Self::FlipAvailIdx(v) => {
                e.u8(17);
                e.u16(*v);
            }
            Self::NeedsNotification => e.u8(18),
            Self::SetNotification(on) => {
                e.u8(19);
                e.u8(u8::from(*on));
            }
            Self::SetSuppression(f, ev) => {
                e.u8(20);
                e.u16(*f);
                e.u16(*ev);
            }
            Self::Drain(b, m) => {
                e.u8(21);
                e.u8(*b);
                e.u8(*m);
            }
        }
    }
}

/// A whole split-ring scenario: configuration, memory image, operations.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Queue configuration.
    pub config: Config,
    /// Operations in order.
    pub ops: Vec<Op>,
}

impl Scenario {
    /// Decode a scenario and copy its image into `mem`.
    pub fn decode(data: &[u8], mem: &TestMemory) -> Self {
        let mut u = Unstructured::new(data);
        let config = Config::decode(&mut u);
        decode_image(&mut u, mem);
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(&mut u));
        }
        Self { config, ops }
    }

    /// Encode a scenario whose image is `image` (copied to [`IMAGE_AT`]).
    pub fn encode(config: &Config, image: &[u8], ops: &[Op]) -> Vec<u8> {
        let mut e = Enc::default();
        config.encode(&mut e);
        e.u16(image.len() as u16);
        e.bytes(image);
        for op in ops {
            op.encode(&mut e);
        }
        e.0
    }
}

/// Input of the differential target: configuration, image, then heads to publish one by one.
#[derive(Clone, Debug)]
pub struct DiffInput {
    /// Queue size.
    pub size: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// The image copied to [`IMAGE_AT`].
    pub image: Vec<u8>,
    /// Heads, each published, popped by both implementations, walked and completed.
    pub heads: Vec<u16>,
}

impl DiffInput {
    /// Decode: `cfg: u8` (bits 0-2 log2 size, bit 3 INDIRECT), image, heads (`u16` each).
    pub fn decode(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        let cfg: u8 = u.arbitrary().unwrap_or(0);
        let n = usize::from(u.arbitrary::<u16>().unwrap_or(0))
            .min(IMAGE_MAX)
            .min(u.len());
        let image = u.bytes(n).unwrap_or(&[]).to_vec();
        let mut heads = Vec::new();
        while !u.is_empty() && heads.len() < 64 {
            heads.push(u.arbitrary::<u16>().unwrap_or(0));
        }
        Self {
            size: 1 << (cfg & 7),
            indirect: cfg & 8 != 0,
            image,
            heads,
        }
    }

    /// Encode (what [`decode`](Self::decode) reads back).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(self.size.trailing_zeros() as u8 | if self.indirect { 8 } else { 0 });
        e.u16(self.image.len() as u16);
        e.bytes(&self.image);
        for h in &self.heads {
            e.u16(*h);
        }
        e.0
    }
}

/// Little-endian encoder matching the decoders above.
#[derive(Clone, Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// LE u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// LE u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// LE u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
}

/// Builds a memory image for [`IMAGE_AT`] by placing descriptors, ring fields and tables at
/// absolute guest addresses (used by the seed generator).
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    bytes: Vec<u8>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// Empty image.
    pub fn new() -> Self {
        Self { bytes: Vec::new() }
    }

    /// Write `b` at guest address `at` (≥ [`IMAGE_AT`]).
    pub fn put(&mut self, at: u64, b: &[u8]) -> &mut Self {
        let off = (at - IMAGE_AT) as usize;
        if self.bytes.len() < off + b.len() {
            self.bytes.resize(off + b.len(), 0);
        }
        self.bytes[off..off + b.len()].copy_from_slice(b);
        self
    }

    /// Write descriptor `d` at `at`.
    pub fn desc(&mut self, at: u64, d: RawDesc) -> &mut Self {
        self.put(at, &d.bytes())
    }

    /// The image bytes.
    pub fn finish(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// One step of the `chain_io` target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// `read` of up to `n` bytes.
    Read(u16),
    /// `read_exact` of `n` bytes.
    ReadExact(u16),
    /// `skip` of `n` bytes.
    Skip(u16),
    /// Switch from the readable part to the writable part.
    ToWriter,
    /// `write` of `n` bytes of value `b`.
    Write(u16, u8),
    /// `write_all` of `n` bytes of value `b`.
    WriteAll(u16, u8),
}

/// Input of the `chain_io` target: configuration, image, one head, then reader/writer steps.
#[derive(Clone, Debug)]
pub struct IoInput {
    /// Queue size.
    pub size: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
    /// The image copied to [`IMAGE_AT`].
    pub image: Vec<u8>,
    /// Head of the chain (taken modulo the size).
    pub head: u16,
    /// Steps.
    pub ops: Vec<IoOp>,
}

impl IoInput {
    /// Decode: `cfg: u8`, image, `head: u16`, then steps of `code: u8, n: u16, b: u8`.
    pub fn decode(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        let cfg: u8 = u.arbitrary().unwrap_or(0);
        let n = usize::from(u.arbitrary::<u16>().unwrap_or(0))
            .min(IMAGE_MAX)
            .min(u.len());
        let image = u.bytes(n).unwrap_or(&[]).to_vec();
        let head = u.arbitrary::<u16>().unwrap_or(0);
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < 64 {
            let code = u.arbitrary::<u8>().unwrap_or(0) % 6;
            let n = u.arbitrary::<u16>().unwrap_or(0) % 0x2000;
            let b = u.arbitrary::<u8>().unwrap_or(0);
            ops.push(match code {
                0 => IoOp::Read(n),
                1 => IoOp::ReadExact(n),
                2 => IoOp::Skip(n),
                3 => IoOp::ToWriter,
                4 => IoOp::Write(n, b),
                _ => IoOp::WriteAll(n, b),
            });
        }
        Self {
            size: 1 << (cfg & 7),
            indirect: cfg & 8 != 0,
            image,
            head,
            ops,
        }
    }

    /// Encode (what [`decode`](Self::decode) reads back).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(self.size.trailing_zeros() as u8 | if self.indirect { 8 } else { 0 });
        e.u16(self.image.len() as u16);
        e.bytes(&self.image);
        e.u16(self.head);
        for op in &self.ops {
            let (code, n, b) = match *op {
                IoOp::Read(n) => (0, n, 0),
                IoOp::ReadExact(n) => (1, n, 0),
                IoOp::Skip(n) => (2, n, 0),
                IoOp::ToWriter => (3, 0, 0),
                IoOp::Write(n, b) => (4, n, b),
                IoOp::WriteAll(n, b) => (5, n, b),
            };
            e.u8(code);
            e.u16(n);
            e.u8(b);
        }
        e.0
    }
}

/// One step of the `mmio` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// Register write `(offset, width, value)`.
    Write(u16, u8, u32),
    /// Register read `(offset, width)`.
    Read(u16, u8),
    /// `process_queue(i)`.
    Process(u8),
    /// `poll()`.
    Poll,
    /// `take_kicks` and process each kicked queue.
    TakeKicks,
    /// Guest writes bytes at `off % 0x8000`.
    Poke(u16, Vec<u8>),
    /// The standard v2 driver initialisation of queue 0 at the standard ring addresses, with
    /// the low feature word `features` accepted (a shortcut to a live device).
    Init(u32),
    /// Guest publishes `head` on queue 0's standard available ring.
    Publish(u16),
}

/// Input of the `mmio` target.
#[derive(Clone, Debug)]
pub struct MmioInput {
    /// Legacy (v1) layout instead of v2.
    pub legacy: bool,
    /// Deferred notify mode instead of inline.
    pub deferred: bool,
    /// Image at [`IMAGE_AT`].
    pub image: Vec<u8>,
    /// Steps.
    pub ops: Vec<MmioOp>,
}

impl MmioInput {
    /// Decode: `cfg: u8` (bit 0 legacy, bit 1 deferred), image, steps.
    pub fn decode(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        let cfg: u8 = u.arbitrary().unwrap_or(0);
        let n = usize::from(u.arbitrary::<u16>().unwrap_or(0))
            .min(IMAGE_MAX)
            .min(u.len());
        let image = u.bytes(n).unwrap_or(&[]).to_vec();
        let mut ops = Vec::new();
        let b = |u: &mut Unstructured<'_>| u.arbitrary::<u8>().unwrap_or(0);
        let h = |u: &mut Unstructured<'_>| u.arbitrary::<u16>().unwrap_or(0);
        let w = |u: &mut Unstructured<'_>| u.arbitrary::<u32>().unwrap_or(0);
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(match b(&mut u) % 8 {
                0 => MmioOp::Write(h(&mut u), b(&mut u), w(&mut u)),
                1 => MmioOp::Read(h(&mut u), b(&mut u)),
                2 => MmioOp::Process(b(&mut u)),
                3 => MmioOp::Poll,
                4 => MmioOp::TakeKicks,
                5 => {
                    let off = h(&mut u);
                    let n = usize::from(b(&mut u) % 64).min(u.len());
                    MmioOp::Poke(off, u.bytes(n).unwrap_or(&[]).to_vec())
                }
                6 => MmioOp::Init(w(&mut u)),
                _ => MmioOp::Publish(h(&mut u)),
            });
        }
        Self {
            legacy: cfg & 1 != 0,
            deferred: cfg & 2 != 0,
            image,
            ops,
        }
    }

    /// Encode (what [`decode`](Self::decode) reads back).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u8(u8::from(self.legacy) | (u8::from(self.deferred) << 1));
        e.u16(self.image.len() as u16);
        e.bytes(&self.image);
        for op in &self.ops {
            match op {
                MmioOp::Write(o, wd, v) => {
                    e.u8(0);
                    e.u16(*o);
                    e.u8(*wd);
                    e.u32(*v);
                }
                MmioOp::Read(o, wd) => {
                    e.u8(1);
                    e.u16(*o);
                    e.u8(*wd);
                }
                MmioOp::Process(i) => {
                    e.u8(2);
                    e.u8(*i);
                }
                MmioOp::Poll => e.u8(3),
                MmioOp::TakeKicks => e.u8(4),
                MmioOp::Poke(o, b) => {
                    e.u8(5);
                    e.u16(*o);
                    e.u8(b.len().min(63) as u8);
                    e.bytes(&b[..b.len().min(63)]);
                }
                MmioOp::Init(f) => {
                    e.u8(6);
                    e.u32(*f);
                }
                MmioOp::Publish(h) => {
                    e.u8(7);
                    e.u16(*h);
                }
            }
        }
        e.0
    }
}

/// Where the `memory` target places its first region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemPlacement {
    /// At `0x1000`.
    Low,
    /// The layout ends `slack` (0…3) bytes below 2⁶⁴.
    Top(u8),
    /// At an arbitrary address (the layout may wrap or overflow).
    At(u64),
    /// At 0.
    Zero,
}

/// How a region of the `memory` target follows the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemGap {
    /// Right after it: a seam.
    Seam,
    /// A hole of `1 + n` bytes.
    Hole(u8),
    /// `n` bytes further (wrapping): far away, overlapping, or wrapped around.
    Far(u64),
}

/// One region of the `memory` target's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// Length in bytes, 0…256.
    pub len: u16,
    /// Placement relative to the previous region (or to the layout start).
    pub gap: MemGap,
    /// Host pointer offset into the 8-aligned backing buffer, 0…7.
    pub host_off: u8,
}

/// Which accessor a `memory` step goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemTarget {
    /// The `RegionTable<4>`.
    Table,
    /// The standalone `HostRegion` of layout entry `i % regions`.
    Solo(u8),
}

/// A guest address of a `memory` step, relative to the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAddr {
    /// Start of layout entry `i % regions` plus `delta` (wrapping).
    Start(u8, i16),
    /// End (`base + len`) of layout entry `i % regions` plus `delta` (wrapping).
    End(u8, i16),
    /// Any address.
    Raw(u64),
    /// `u64::MAX - n`.
    Top(u8),
}

/// A length of a `memory` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemLen {
    /// 0…80.
    Small(u8),
    /// Up to the end of layout entry `i % regions`, plus `delta` (wrapping).
    ToEnd(u8, i8),
    /// Any length (copies take it modulo 2048).
    Raw(u64),
}

/// One step of the `memory` target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemOp {
    /// `read(addr, len)`.
    Read(MemTarget, MemAddr, MemLen),
    /// `write(addr, bytes)`, bytes derived from the seed.
    Write(MemTarget, MemAddr, MemLen, u8),
    /// `check_range(addr, len)`.
    Check(MemTarget, MemAddr, MemLen),
    /// `load_u16(addr)`.
    Load(MemTarget, MemAddr),
    /// `store_u16(addr, value)`.
    Store(MemTarget, MemAddr, u16),
    /// `read_obj` of type kind `k % 6` (u8, u16, u32, u64, `[u8; 16]`, `[u32; 3]`).
    ReadObj(MemTarget, MemAddr, u8),
    /// `write_obj` of type kind `k % 6`, value derived from the seed.
    WriteObj(MemTarget, MemAddr, u8, u8),
}

/// Input of the `memory` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemInput {
    /// Where the layout starts.
    pub placement: MemPlacement,
    /// 1…4 regions.
    pub regions: Vec<MemRegion>,
    /// Steps.
    pub ops: Vec<MemOp>,
}

impl MemInput {
    /// Most steps per input.
    pub const MAX_OPS: usize = 128;

    /// Decode: header `h: u8` (bits 0-1 regions − 1, bits 2-3 placement: Low, Top with slack in
    /// bits 4-5, At + `u64`, Zero); per region `kind: u8` (bits 0-2 host offset, bits 4-5 gap:
    /// Seam, Hole + `u8`, Far + `u64`, Seam; bit 7 tiny) and `len: u8` (`len + 1`, tiny:
    /// `len % 4`); then steps: `code: u8` (`code & 7` the op, 7 = read; `code >> 3` ≥ 24 a
    /// standalone region), the address (`mode: u8`: `mode & 3` Start/End + `delta: i16` with
    /// entry `mode >> 2`, Raw + `u64`, Top + `u8`), then the op's length (`b: u8` ≤ 200 small,
    /// ≤ 228 ToEnd + `i8`, else Raw + `u64`) and values.
    pub fn decode(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        let b = |u: &mut Unstructured<'_>| u.arbitrary::<u8>().unwrap_or(0);
        let h16 = |u: &mut Unstructured<'_>| u.arbitrary::<u16>().unwrap_or(0);
        let q = |u: &mut Unstructured<'_>| u.arbitrary::<u64>().unwrap_or(0);
        let head = b(&mut u);
        let placement = match (head >> 2) & 3 {
            0 => MemPlacement::Low,
            1 => MemPlacement::Top((head >> 4) & 3),
            2 => MemPlacement::At(q(&mut u)),
            _ => MemPlacement::Zero,
        };
        let regions = (0..=(head & 3))
            .map(|_| {
                let kind = b(&mut u);
                let gap = match (kind >> 4) & 3 {
                    1 => MemGap::Hole(b(&mut u)),
                    2 => MemGap::Far(q(&mut u)),
                    _ => MemGap::Seam,
                };
                let l = b(&mut u);
                MemRegion {
                    len: if kind & 0x80 != 0 {
                        u16::from(l % 4)
                    } else {
                        u16::from(l) + 1
                    },
                    gap,
                    host_off: kind & 7,
                }
            })
            .collect();
        let addr = |u: &mut Unstructured<'_>| {
            let m = b(u);
            match m & 3 {
                0 => MemAddr::Start(m >> 2, h16(u) as i16),
                1 => MemAddr::End(m >> 2, h16(u) as i16),
                2 => MemAddr::Raw(q(u)),
                _ => MemAddr::Top(b(u)),
            }
        };
        let len = |u: &mut Unstructured<'_>| match b(u) {
            v @ 0..=200 => MemLen::Small(v % 81),
            v @ 201..=228 => MemLen::ToEnd(v - 201, b(u) as i8),
            _ => MemLen::Raw(q(u)),
        };
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < Self::MAX_OPS {
            let code = b(&mut u);
            let t = match code >> 3 {
                v @ 24.. => MemTarget::Solo(v - 24),
                _ => MemTarget::Table,
            };
            let a = addr(&mut u);
            ops.push(match code & 7 {
                1 => MemOp::Write(t, a, len(&mut u), b(&mut u)),
                2 => MemOp::Check(t, a, len(&mut u)),
                3 => MemOp::Load(t, a),
                4 => MemOp::Store(t, a, h16(&mut u)),
                5 => MemOp::ReadObj(t, a, b(&mut u) % 6),
                6 => MemOp::WriteObj(t, a, b(&mut u) % 6, b(&mut u)),
                _ => MemOp::Read(t, a, len(&mut u)),
            });
        }
        Self {
            placement,
            regions,
            ops,
        }
    }

    /// Encode (what [`decode`](Self::decode) reads back, for values in the documented ranges).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        let n = (self.regions.len().clamp(1, 4) - 1) as u8;
        match self.placement {
            MemPlacement::Low => e.u8(n),
            MemPlacement::Top(slack) => e.u8(n | 4 | ((slack & 3) << 4)),
            MemPlacement::At(a) => {
                e.u8(n | 8);
                e.u64(a);
            }
            MemPlacement::Zero => e.u8(n | 12),
        }
        for r in self.regions.iter().take(4) {
            let tiny = r.len < 4;
            let g = match r.gap {
                MemGap::Seam => 0,
                MemGap::Hole(_) => 1,
                MemGap::Far(_) => 2,
            };
            e.u8((r.host_off & 7) | (g << 4) | if tiny { 0x80 } else { 0 });
            match r.gap {
                MemGap::Seam => {}
                MemGap::Hole(v) => e.u8(v),
                MemGap::Far(v) => e.u64(v),
            }
            e.u8(if tiny { r.len as u8 } else { (r.len - 1) as u8 });
        }
        let target = |t: MemTarget| match t {
            MemTarget::Table => 0u8,
            MemTarget::Solo(i) => (24 + (i & 7)) << 3,
        };
        let addr = |e: &mut Enc, a: MemAddr| match a {
            MemAddr::Start(i, d) => {
                e.u8((i & 0x3f) << 2);
                e.u16(d as u16);
            }
            MemAddr::End(i, d) => {
                e.u8(((i & 0x3f) << 2) | 1);
                e.u16(d as u16);
            }
            MemAddr::Raw(v) => {
                e.u8(2);
                e.u64(v);
            }
            MemAddr::Top(v) => {
                e.u8(3);
                e.u8(v);
            }
        };
        let len = |e: &mut Enc, l: MemLen| match l {
            MemLen::Small(v) => e.u8(v % 81),
            MemLen::ToEnd(i, d) => {
                e.u8(201 + i % 28);
                e.u8(d as u8);
            }
            MemLen::Raw(v) => {
                e.u8(229);
                e.u64(v);
            }
        };
        for op in &self.ops {
            match *op {
                MemOp::Read(t, a, l) => {
                    e.u8(target(t));
                    addr(&mut e, a);
                    len(&mut e, l);
                }
                MemOp::Write(t, a, l, s) => {
                    e.u8(target(t) | 1);
                    addr(&mut e, a);
                    len(&mut e, l);
                    e.u8(s);
                }
                MemOp::Check(t, a, l) => {
                    e.u8(target(t) | 2);
                    addr(&mut e, a);
                    len(&mut e, l);
                }
                MemOp::Load(t, a) => {
                    e.u8(target(t) | 3);
                    addr(&mut e, a);
                }
                MemOp::Store(t, a, v) => {
                    e.u8(target(t) | 4);
                    addr(&mut e, a);
                    e.u16(v);
                }
                MemOp::ReadObj(t, a, k) => {
                    e.u8(target(t) | 5);
                    addr(&mut e, a);
                    e.u8(k % 6);
                }
                MemOp::WriteObj(t, a, k, s) => {
                    e.u8(target(t) | 6);
                    addr(&mut e, a);
                    e.u8(k % 6);
                    e.u8(s);
                }
            }
        }
        e.0
    }
}
