//! Codec tests against Go's own bytes: the golden vectors, gopeer both ways, property
//! tests and hostile input.

mod golden;
mod hostile;
mod newer_peer;
mod props;
mod typed;
