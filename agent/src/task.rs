//! Background tasks tied to their owner's lifetime.

/// Aborts a task when dropped: a helper task (an event listener, a progress poller) ends
/// with whatever it serves, also when that returns early or panics.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
