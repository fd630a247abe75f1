//! Which actions can be followed: every running action, and the most
//! recently finished ones.
//!
//! Filled only from the lifecycle's typed facts ([`super::observer`]):
//! an action enters when its process started, with the files its stdout
//! and stderr go to, and is marked ended when it finished. Running
//! actions are always kept (there are as many as the runner runs at
//! once); of the finished ones the newest [`FINISHED_ACTIONS_KEPT`] are
//! kept, the oldest forgotten first, so the registry stays bounded however
//! long the runner serves. Whether a finished action's files still exist
//! is found out when it is followed (bb_worker removes its directory once
//! it has collected the outputs).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::action::observer::OutputFiles;
use crate::action::{ActionId, RunnerInstance};
use crate::sync::lock_unpoisoned;

/// Finished actions kept followable at most: a few hundred bytes each
/// (two paths, an id, a channel), under half a megabyte in all; at a few
/// actions a second, several minutes of a busy worker's history, longer
/// than bb_worker keeps their directories.
pub const FINISHED_ACTIONS_KEPT: usize = 1024;

/// The followable actions of one runner instance.
pub struct Followable {
    instance: RunnerInstance,
    finished_kept: usize,
    state: Mutex<RegistryState>,
}

#[derive(Default)]
struct RegistryState {
    /// By action id.
    actions: HashMap<String, Arc<FollowableAction>>,
    /// Finished actions, oldest first.
    finished: VecDeque<String>,
}

/// One action that can be followed.
#[derive(Debug)]
pub struct FollowableAction {
    /// Where its stdout and stderr go.
    pub outputs: OutputFiles,
    /// Becomes `true` when it has ended.
    ended: watch::Sender<bool>,
}

impl FollowableAction {
    /// Whether it has ended, and the means to wait until it has.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }
}

impl Followable {
    /// The actions of `instance`, keeping the newest
    /// [`FINISHED_ACTIONS_KEPT`] finished ones.
    pub fn new(instance: RunnerInstance) -> Self {
        Self::keeping(instance, FINISHED_ACTIONS_KEPT)
    }

    /// Keeping `finished_kept` finished actions (tests).
    pub fn keeping(instance: RunnerInstance, finished_kept: usize) -> Self {
        Followable {
            instance,
            finished_kept,
            state: Mutex::new(RegistryState::default()),
        }
    }

    /// The instance whose actions these are.
    pub fn instance(&self) -> &RunnerInstance {
        &self.instance
    }

    /// `id` started, writing to `outputs`.
    pub fn started(&self, id: &ActionId, outputs: &OutputFiles) {
        let action = Arc::new(FollowableAction {
            outputs: outputs.clone(),
            ended: watch::Sender::new(false),
        });
        lock_unpoisoned(&self.state)
            .actions
            .insert(id.as_str().to_owned(), action);
    }

    /// `id` ended (whether it started or not): its followers send what is
    /// left and end.
    pub fn finished(&self, id: &ActionId) {
        let mut state = lock_unpoisoned(&self.state);
        let Some(action) = state.actions.get(id.as_str()) else {
            return; // it never started
        };
        action.ended.send_replace(true);
        state.finished.push_back(id.as_str().to_owned());
        while state.finished.len() > self.finished_kept {
            let Some(oldest) = state.finished.pop_front() else {
                break;
            };
            state.actions.remove(&oldest);
        }
    }

    /// The action named `id`, if it can be followed.
    pub fn find(&self, id: &str) -> Option<Arc<FollowableAction>> {
        lock_unpoisoned(&self.state).actions.get(id).cloned()
    }

    /// Actions kept now, running and finished.
    pub fn len(&self) -> usize {
        lock_unpoisoned(&self.state).actions.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionIds;

    #[test]
    fn running_actions_are_kept_and_only_the_newest_finished_ones() {
        // Why it matters: the registry lives as long as the runner; it
        // must not grow with every action ever run, but must never drop
        // one that is still running.
        let ids = ActionIds::new(RunnerInstance::random());
        let registry = Followable::keeping(ids.instance().clone(), 2);
        let running = ids.next();
        registry.started(&running, &OutputFiles::default());
        let finished: Vec<ActionId> = (0..3).map(|_| ids.next()).collect();
        for id in &finished {
            registry.started(id, &OutputFiles::default());
            registry.finished(id);
        }
        assert!(registry.find(running.as_str()).is_some());
        assert!(registry.find(finished[0].as_str()).is_none());
        assert!(registry.find(finished[1].as_str()).is_some());
        assert!(registry.find(finished[2].as_str()).is_some());
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn an_ended_action_tells_its_waiting_followers() {
        // Why it matters: the end is what lets a follower send the rest
        // and end_of_output instead of waiting forever.
        let ids = ActionIds::new(RunnerInstance::random());
        let registry = Followable::new(ids.instance().clone());
        let id = ids.next();
        registry.started(&id, &OutputFiles::default());
        let ended = registry.find(id.as_str()).unwrap().ended();
        assert!(!*ended.borrow());
        registry.finished(&id);
        assert!(*ended.borrow());
        // An action that never started is not followable.
        let never = ids.next();
        registry.finished(&never);
        assert!(registry.find(never.as_str()).is_none());
    }
}
