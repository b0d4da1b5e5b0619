//! Where the agent gets the time; a test or simulator substitutes its own. Its own module so
//! the API, the connectors and sync take it without depending on each other.

use shared_model::Timestamp;

/// Where the agent gets the time; a test or simulator can substitute its own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Timestamp::from_micros(micros)
    }
}
