//! The ring-backed channel: two VMBus rings over shared memory, eventfd doorbells.

// Used by the ring channel, which waits for the ring crate's reader/writer API.
#[allow(dead_code)]
mod os;
