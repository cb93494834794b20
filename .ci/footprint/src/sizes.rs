//! `size_of` of virtq's public state types on the target, as a table the script reads back
//! from the ELF (symbol `VIRTQ_SIZES`, little-endian u32 words in the order of `names` in
//! .ci/footprint.sh).
#![no_std]
#![no_main]

mod common;

use core::mem::size_of;

use virtq::memory::{HostRegion, RegionTable};
use virtq::transport::MmioTransport;
use virtq::{
    ChainError, Descriptor, DescriptorChain, DescriptorIter, MemoryError, PackedChain, PackedQueue, Queue,
    QueueError,
};

/// The sizes, in bytes.
#[unsafe(no_mangle)]
#[used]
pub static VIRTQ_SIZES: [u32; 13] = [
    size_of::<Queue>() as u32,
    size_of::<Queue<{ virtq::split::in_flight_words(256) }>>() as u32,
    size_of::<PackedQueue>() as u32,
    size_of::<PackedChain>() as u32,
    size_of::<MmioTransport<(), HostRegion, 1>>() as u32,
    size_of::<DescriptorChain>() as u32,
    size_of::<DescriptorIter<'static, HostRegion>>() as u32,
    size_of::<Descriptor>() as u32,
    size_of::<HostRegion>() as u32,
    size_of::<RegionTable<4>>() as u32,
    size_of::<QueueError>() as u32,
    size_of::<ChainError>() as u32,
    size_of::<MemoryError>() as u32,
];

/// Entry point: keeps the table alive.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    // SAFETY: linked, never run.
    let _ = unsafe { core::ptr::read_volatile(&VIRTQ_SIZES) };
    common::halt()
}
