//! Shared memory that another process may write at any time (filled by the VMBus transport work).
