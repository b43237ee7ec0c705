//! nrpc against the golden frames and over a real nats-server.

mod interop;
mod live;
mod vectors;
