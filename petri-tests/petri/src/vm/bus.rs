//! One bus of a model VM: the shared host side (host, optional relay, the pump) and the
//! guest model that packets reach when the chooser delivers them.

use crate::host_side::{HostSide, ToGuest};
use guest_linux::LinuxGuest;
use std::time::Duration;
use vmbus_channel::Packet;

/// One bus of the VM.
pub(super) struct Bus {
    pub(super) side: HostSide,
    pub(super) guest: LinuxGuest,
    /// When the guest's probe path returned successfully.
    pub(super) probed_at: Option<Duration>,
}

/// The model guest takes what arrives straight into its channel callback's queue.
impl ToGuest for LinuxGuest {
    fn packet(&mut self, packet: Packet) {
        self.receive(packet);
    }

    fn rescind(&mut self) {
        LinuxGuest::rescind(self);
    }
}
