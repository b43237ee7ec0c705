//! Panics as values.
//!
//! [`contained`] polls a future inside `catch_unwind`: a panic ends that future with
//! `Err(Panic)` (its message and where it happened) and the caller answers, counts and
//! logs it. While a contained future is polled, the process's panic hook (installed by
//! [`install_hook`]) only records the panic for the caller instead of printing it, so
//! each contained panic is logged once, by the caller, with what it was doing (the
//! subject of the request, the task's name). Panics outside go to the previous hook.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Once;
use std::task::Poll;

thread_local! {
    /// How many contained futures are being polled on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the last contained panic on this thread happened.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic caught by [`contained`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    /// The panic's message (`"<not a string>"` when its payload is no string).
    pub message: String,
    /// `file:line:column`, when the hook saw it.
    pub location: Option<String>,
}

impl Panic {
    fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<not a string>".to_owned()
        };
        Panic { message, location: LOCATION.with(|l| l.borrow_mut().take()) }
    }
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(at) => write!(f, "panicked at {at}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

/// Installs the panic hook that keeps contained panics quiet (once per process; later
/// calls do nothing). Without it, contained panics are still caught, and printed twice.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) > 0 {
                let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks this thread as polling a contained future until dropped.
struct Depth;

impl Depth {
    fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Runs `fut` to its end; a panic while it is polled ends it with `Err(Panic)`.
///
/// State the future shared with others may be left half changed by the panic: contain
/// only work whose shared state is updated in steps that a panic cannot split, or that
/// is consistent at every `.await`.
pub async fn contained<F: Future>(fut: F) -> Result<F::Output, Panic> {
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        let _depth = Depth::enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(Panic::from_payload(payload))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_value_with_its_message_and_place() {
        install_hook();
        let ok = contained(async { 7 }).await;
        assert_eq!(ok, Ok(7));
        let failed = contained(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = Vec::new();
            v[3]
        })
        .await
        .unwrap_err();
        assert!(failed.message.contains("index out of bounds"), "{failed}");
        assert!(failed.location.as_deref().is_some_and(|l| l.contains("contain.rs")), "{failed:?}");
        let formatted = contained(async { panic!("boom {}", 42) }).await.unwrap_err();
        assert_eq!(formatted.message, "boom 42");
        assert_eq!(DEPTH.with(Cell::get), 0, "the depth is restored after a panic");
    }
}
