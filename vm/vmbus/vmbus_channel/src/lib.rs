//! VMBus packets, transactions and channels over ring pairs or in memory.

#![forbid(unsafe_code)]
