//! Every vPCI message as zerocopy wire types, with a typed decoder and encoder.

#![forbid(unsafe_code)]
