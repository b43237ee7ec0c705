//! islb's runtime: the few pieces every long-running part of the shell stands on.
//!
//! - [`contain`]: runs a future so that a panic inside it becomes a value ([`Panic`]):
//!   one request or one timer round is lost, never the loop that runs it.
//! - [`supervise`]: spawns the long-running tasks by name; one that ends before it is
//!   told to stop is reported to [`Health`] (which `/readyz` reads) and to whoever waits on
//!   the [`Supervisor`].
//!
//! Nothing here knows NATS, the store or the registry; the nrpc server and the shell both
//! stand on it.

pub mod contain;
pub mod supervise;

pub use contain::{Panic, contained};
pub use supervise::{Health, Supervisor, TaskFailure};
