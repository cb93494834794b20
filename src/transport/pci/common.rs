//! The common configuration structure (`struct virtio_pci_common_cfg`, VIRTIO 1.4 §4.1.4.3) of
//! the virtio-pci transport: field decode onto the transport core.

use crate::memory::GuestMemory;
use crate::transport::VirtioDevice;
use crate::transport::core::Area;

use super::PciTransport;
use super::layout::common as off;
use super::msix::{Interrupts, NO_VECTOR};

/// A field of the common configuration structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    Queue(Area),
    QueueNotifyData,
    QueueReset,
    /// `admin_queue_index`, `admin_queue_num`: no administration queues, read 0.
    Admin,
}

/// Every field: offset, width in bytes.
const FIELDS: [(u64, usize, Field); 20] = [
    (off::DEVICE_FEATURE_SELECT, 4, Field::DeviceFeatureSelect),
    (off::DEVICE_FEATURE, 4, Field::DeviceFeature),
    (off::DRIVER_FEATURE_SELECT, 4, Field::DriverFeatureSelect),
    (off::DRIVER_FEATURE, 4, Field::DriverFeature),
    (off::CONFIG_MSIX_VECTOR, 2, Field::ConfigMsixVector),
    (off::NUM_QUEUES, 2, Field::NumQueues),
    (off::DEVICE_STATUS, 1, Field::DeviceStatus),
    (off::CONFIG_GENERATION, 1, Field::ConfigGeneration),
    (off::QUEUE_SELECT, 2, Field::QueueSelect),
    (off::QUEUE_SIZE, 2, Field::QueueSize),
    (off::QUEUE_MSIX_VECTOR, 2, Field::QueueMsixVector),
    (off::QUEUE_ENABLE, 2, Field::QueueEnable),
    (off::QUEUE_NOTIFY_OFF, 2, Field::QueueNotifyOff),
    (off::QUEUE_DESC, 8, Field::Queue(Area::Desc)),
    (off::QUEUE_DRIVER, 8, Field::Queue(Area::Driver)),
    (off::QUEUE_DEVICE, 8, Field::Queue(Area::Device)),
    (off::QUEUE_NOTIFY_DATA, 2, Field::QueueNotifyData),
    (off::QUEUE_RESET, 2, Field::QueueReset),
    (off::ADMIN_QUEUE_INDEX, 2, Field::Admin),
    (off::ADMIN_QUEUE_NUM, 2, Field::Admin),
];

/// The field an access of `len` bytes at `at` addresses, and the bit position of the access
/// in it: the field's own width at its offset, or for a 64-bit field either 32-bit half
/// (§4.1.3: "64-bit fields are to be treated as two 32-bit fields"). Anything else (another
/// width, a misaligned or straddling access, a gap) addresses nothing.
fn field(at: u64, len: usize) -> Option<(Field, u32)> {
    FIELDS.iter().find_map(|&(o, w, f)| {
        if at == o && len == w {
            Some((f, 0))
        } else if w == 8 && len == 4 && at == o.wrapping_add(4) {
            Some((f, 32))
        } else if w == 8 && len == 4 && at == o {
            Some((f, 0))
        } else {
            None
        }
    })
}

/// The low `len` bytes set.
pub(super) fn width_mask(len: usize) -> u64 {
    match len {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

impl<D: VirtioDevice, M: GuestMemory, const Q: usize, const V: usize> PciTransport<D, M, Q, V> {
    /// The selected queue, if it exists (a queue of maximum size 0 does not, §4.1.4.3).
    pub(super) fn selected_queue(&self) -> Option<usize> {
        let i = usize::from(self.queue_select);
        self.core.queue_exists(i).then_some(i)
    }

    /// A read of `len` bytes at `at` in the common configuration.
    pub(super) fn common_read(&self, at: u64, len: usize) -> u64 {
        let Some((f, shift)) = field(at, len) else {
            return 0;
        };
        let q = self.selected_queue();
        let full: u64 = match f {
            Field::DeviceFeatureSelect => self.device_feature_select.into(),
            Field::DeviceFeature => self
                .core
                .device_feature_word(self.device_feature_select)
                .into(),
            Field::DriverFeatureSelect => self.driver_feature_select.into(),
            Field::DriverFeature => self
                .core
                .driver_feature_word(self.driver_feature_select)
                .into(),
            Field::ConfigMsixVector => self.irq.config_vector.into(),
            Field::NumQueues => self.num_queues.into(),
            Field::DeviceStatus => self.core.status().bits().into(),
            // An 8-bit field: the low byte of the core's generation.
            Field::ConfigGeneration => (self.core.config_generation() & 0xFF).into(),
            Field::QueueSelect => self.queue_select.into(),
            // 0 for a queue that does not exist (§4.1.4.3.1); otherwise the size written, or
            // the maximum for the negotiated ring format (a power of two unless packed).
            Field::QueueSize => q.map_or(0, |i| self.core.queue_num(i).into()),
            Field::QueueMsixVector => q
                .and_then(|i| self.irq.queue_vectors.get(i))
                .copied()
                .unwrap_or(NO_VECTOR)
                .into(),
            Field::QueueEnable => q.map_or(0, |i| self.core.queue_enabled(i).into()),
            // Queue `i` is notified at `i * notify_off_multiplier`, and identifies itself by
            // its index (no NOTIF_CONFIG_DATA).
            Field::QueueNotifyOff | Field::QueueNotifyData => {
                q.map_or(0, |i| u64::try_from(i).unwrap_or(0))
            }
            Field::Queue(area) => q.map_or(0, |i| self.core.queue_addr(i, area)),
            // A queue reset completes inside the write: it always reads 0 (§4.1.4.3.1).
            Field::QueueReset | Field::Admin => 0,
        };
        (full >> shift) & width_mask(len)
    }

    /// A write of `len` bytes at `at` in the common configuration (read-only fields and
    /// accesses that address no field are ignored, §4.1.4.3.2).
    pub(super) fn common_write(&mut self, at: u64, len: usize, value: u64) {
        let Some((f, shift)) = field(at, len) else {
            return;
        };
        let value = value & width_mask(len);
        let v16 = u16::try_from(value & 0xFFFF).unwrap_or(NO_VECTOR);
        let v32 = u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0);
        let q = self.selected_queue();
        match (f, q) {
            (Field::DeviceFeatureSelect, _) => self.device_feature_select = v32,
            (Field::DriverFeatureSelect, _) => self.driver_feature_select = v32,
            (Field::DriverFeature, _) => self
                .core
                .write_driver_feature_word(self.driver_feature_select, v32),
            (Field::ConfigMsixVector, _) => self.irq.config_vector = Interrupts::<Q, V>::map(v16),
            (Field::DeviceStatus, _) => self.write_status(u8::try_from(value & 0xFF).unwrap_or(0)),
            (Field::QueueSelect, _) => self.queue_select = v16,
            (Field::QueueSize, Some(i)) => {
                self.core.set_queue_num(i, value.try_into().unwrap_or(0))
            }
            (Field::QueueMsixVector, Some(i)) => {
                if let Some(slot) = self.irq.queue_vectors.get_mut(i) {
                    *slot = Interrupts::<Q, V>::map(v16);
                }
            }
            // Only 1 enables; the driver must not write 0 (§4.1.4.3.2), so 0 (or any other
            // value) leaves the queue as it is.
            (Field::QueueEnable, Some(i)) if value == 1 => self.core.enable_queue(i, &mut self.irq),
            (Field::Queue(area), Some(i)) => {
                self.core
                    .write_queue_addr(i, area, value << shift, width_mask(len) << shift);
            }
            (Field::QueueReset, Some(i)) if value == 1 => {
                // The queue's fields return to their defaults, its vector too.
                if self.core.reset_queue(i)
                    && let Some(slot) = self.irq.queue_vectors.get_mut(i)
                {
                    *slot = NO_VECTOR;
                }
            }
            // Read-only fields, queue fields with no queue selected, other values.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_decode() {
        assert_eq!(field(0x14, 1), Some((Field::DeviceStatus, 0)));
        assert_eq!(field(0x14, 2), None, "status is 8 bits");
        assert_eq!(field(0x12, 4), None, "straddles two fields");
        assert_eq!(field(0x20, 8), Some((Field::Queue(Area::Desc), 0)));
        assert_eq!(field(0x24, 4), Some((Field::Queue(Area::Desc), 32)));
        assert_eq!(field(0x20, 4), Some((Field::Queue(Area::Desc), 0)));
        assert_eq!(field(0x24, 8), None, "straddles desc and driver");
        assert_eq!(field(0x00, 8), None, "two 32-bit fields");
        assert_eq!(field(0x40, 2), None, "past the structure");
        for (o, w, f) in FIELDS {
            assert_eq!(field(o, w), Some((f, 0)));
        }
    }
}
