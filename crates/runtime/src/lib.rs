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

/// Shows an error with its sources, `outer: inner: innermost` (for logs, where only the
/// top error's text would otherwise appear).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_shows_every_source() {
        let inner = std::io::Error::other("connection refused");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("store unavailable")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(super::Chain(&Outer(inner)).to_string(), "store unavailable: connection refused");
    }
}
