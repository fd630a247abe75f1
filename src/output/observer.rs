//! The observer that tells the registry which actions can be followed,
//! from the lifecycle's typed facts: started (with its output files) and
//! finished.

use std::sync::Arc;

use super::registry::Followable;
use crate::action::observer::{ActionStarted, Observer};
use crate::action::ActionOutcome;

/// Keeps [`Followable`] up to date.
pub struct OutputObserver {
    registry: Arc<Followable>,
}

impl OutputObserver {
    /// Tells `registry`.
    pub fn new(registry: Arc<Followable>) -> Self {
        OutputObserver { registry }
    }
}

impl Observer for OutputObserver {
    fn action_started(&self, started: &ActionStarted) {
        self.registry.started(&started.id, &started.outputs);
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        self.registry.finished(&outcome.id);
    }
}
