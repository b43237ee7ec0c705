//! islb's functional core: what the registry decides, as pure data transformations.
//!
//! Nothing here does I/O, spawns a task, sleeps or reads a clock: the time is an argument
//! ([`Timestamp`]) and so is any randomness. The imperative shell (`islb-server`) feeds
//! decoded requests in and carries the decisions out (replies, events, store writes).
//!
//! - [`command`]: a decoded discovery request becomes a validated [`Command`] or a
//!   [`Rejection`] whose text goes back to the requester.
//! - [`registry`]: the live nodes with their deadlines; writes, departures and expiry
//!   turn into [`Event`]s; `get` answers.
//! - [`placement`]: the choice of a node for a new session (capacity, DC, load, ties).
//! - [`session_key`]: which session a lookup names (`sid` param or the JWT's claim).
//! - [`replica`]: one replica's whole state (registry, sessions, keep-alive batch, what
//!   it knows of the store) and every decision the shell asks of it: the keep-alive fast
//!   path, what a store answer means, reconciling with the store, claims, recovery.
//! - [`sessions`]: the session table (sid -> node with a fencing version), drain marks,
//!   and [`sessions::decide`], the decision for one lookup.
//! - [`subject`]: per-session subjects, the sid as one token, one-to-one.

pub mod command;
pub mod placement;
pub mod registry;
pub mod replica;
pub mod session_key;
pub mod sessions;
pub mod subject;
pub mod time;

pub use command::{Command, Lookup, Rejection, WriteAction};
pub use registry::{Entry, Event, EventKind, NodeKey, Registry, RegistryConfig, Verdict, node_key};
pub use replica::{Change, Claim, Pending, Replica, SessionClaim, Settled, WriteStep};
pub use sessions::{Decision, Session, Sessions};
pub use time::Timestamp;
