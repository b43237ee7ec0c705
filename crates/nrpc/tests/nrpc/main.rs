//! nrpc against the golden frames and over a real nats-server.

mod hostile;
mod interop;
mod limits;
mod live;
mod vectors;
