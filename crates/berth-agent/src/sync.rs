//! What the agent does with each list of assignments from the server, decided without I/O:
//! which instances to start or adopt, which supervisors to stop, which survivors of an earlier
//! agent to stop or report, in the order the loop in `lib.rs` carries them out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_api::Assignment;
use berth_core::Desired;
use berth_core::spec::DriverKind;

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Start a supervisor for the instance with this driver; `adopt` takes over the survivor.
    Start { id: String, driver: DriverKind, adopt: bool },
    /// The node has no such driver: the instance fails.
    NoDriver { id: String, driver: DriverKind },
    /// Tell the instance's supervisor to stop it.
    Stop { id: String },
    /// Stop a survivor the server wants stopped, then say it stopped.
    StopSurvivor { id: String, grace: Duration },
    /// Nothing runs it here: say it stopped.
    ReportStopped { id: String },
    /// A survivor the server does not know: stop it.
    StopOrphan { id: String },
}

/// What the agent knows between lists.
#[derive(Debug, Default)]
pub(crate) struct Sync {
    /// Instances a supervisor runs.
    running: HashSet<String>,
    /// Instances that ended here: not started again while the server still lists them.
    finished: HashSet<String>,
    /// Instances an earlier agent left running, not yet claimed, with their driver.
    survivors: HashMap<String, DriverKind>,
    synced_once: bool,
}

impl Sync {
    pub(crate) fn new(survivors: impl IntoIterator<Item = (String, DriverKind)>) -> Sync {
        Sync { survivors: survivors.into_iter().collect(), ..Sync::default() }
    }

    /// A supervisor ended.
    pub(crate) fn ended(&mut self, id: &str) {
        self.running.remove(id);
        self.finished.insert(id.to_string());
    }

    /// The commands for a new list, given the drivers this node has.
    pub(crate) fn assign(&mut self, assignments: &[Assignment], drivers: &[DriverKind]) -> Vec<Command> {
        let mut out = Vec::new();
        let listed: HashSet<&str> = assignments.iter().map(|a| a.instance.id.as_str()).collect();
        for a in assignments {
            let id = &a.instance.id;
            if self.finished.contains(id) {
                continue;
            }
            match a.instance.desired {
                Desired::Run if self.running.contains(id) => {}
                Desired::Run => {
                    let adopted = self.survivors.remove(id);
                    let driver = adopted.unwrap_or(a.instance.driver);
                    if adopted.is_none() && !drivers.contains(&driver) {
                        out.push(Command::NoDriver { id: id.clone(), driver });
                        self.finished.insert(id.clone());
                        continue;
                    }
                    self.running.insert(id.clone());
                    out.push(Command::Start { id: id.clone(), driver, adopt: adopted.is_some() });
                }
                Desired::Stop if self.running.contains(id) => out.push(Command::Stop { id: id.clone() }),
                Desired::Stop => {
                    let grace = a.spec.stop_timeout.as_duration();
                    out.push(match self.survivors.remove(id) {
                        Some(_) => Command::StopSurvivor { id: id.clone(), grace },
                        None => Command::ReportStopped { id: id.clone() },
                    });
                    self.finished.insert(id.clone());
                }
            }
        }
        // The server no longer wants these here (failed, forgotten, or moved): stop them.
        let mut gone: Vec<&String> = self.running.iter().filter(|id| !listed.contains(id.as_str())).collect();
        gone.sort();
        out.extend(gone.into_iter().map(|id| Command::Stop { id: id.clone() }));
        // After the first list, a survivor nobody claimed is an orphan.
        if !self.synced_once {
            self.synced_once = true;
            let mut orphans: Vec<String> = self.survivors.drain().map(|(id, _)| id).collect();
            orphans.sort();
            out.extend(orphans.into_iter().map(|id| Command::StopOrphan { id }));
        }
        self.finished.retain(|id| listed.contains(id.as_str()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{AppSpec, Instance, InstanceState};

    fn assignment(id: &str, desired: Desired, driver: DriverKind) -> Assignment {
        let spec = AppSpec::from_yaml("group: g\nname: web\nimage: i\nstop_timeout: 7s\n", None).unwrap();
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "app": "g/web", "version": 1, "node": "n1", "driver": driver, "state": "staging",
            "desired": desired, "host_ports": [], "host": "127.0.0.1", "created_at": 0
        }))
        .unwrap();
        Assignment { spec, instance: Instance { state: InstanceState::Staging, ..instance } }
    }

    const BOTH: &[DriverKind] = &[DriverKind::Docker, DriverKind::Exec];

    #[test]
    fn new_instances_start_once_and_stop_when_asked_or_unlisted() {
        let mut sync = Sync::new([]);
        let a = assignment("a", Desired::Run, DriverKind::Docker);
        let b = assignment("b", Desired::Run, DriverKind::Exec);
        let start = |id: &str, driver| Command::Start { id: id.into(), driver, adopt: false };
        assert_eq!(
            sync.assign(&[a.clone(), b.clone()], BOTH),
            [start("a", DriverKind::Docker), start("b", DriverKind::Exec)]
        );
        assert_eq!(sync.assign(&[a.clone(), b.clone()], BOTH), [], "already running");
        let stop_a = assignment("a", Desired::Stop, DriverKind::Docker);
        assert_eq!(sync.assign(&[stop_a, b], BOTH), [Command::Stop { id: "a".into() }]);
        assert_eq!(sync.assign(&[], BOTH), [Command::Stop { id: "a".into() }, Command::Stop { id: "b".into() }]);
    }

    #[test]
    fn an_instance_that_ended_here_is_not_started_again_while_listed() {
        let mut sync = Sync::new([]);
        let a = assignment("a", Desired::Run, DriverKind::Exec);
        sync.assign(std::slice::from_ref(&a), BOTH);
        sync.ended("a");
        assert_eq!(sync.assign(std::slice::from_ref(&a), BOTH), []);
        // Unlisted once, it is forgotten: the same id listed again (a restart of the server
        // from an old store, say) starts anew.
        assert_eq!(sync.assign(&[], BOTH), []);
        assert_eq!(
            sync.assign(&[a], BOTH),
            [Command::Start { id: "a".into(), driver: DriverKind::Exec, adopt: false }]
        );
    }

    #[test]
    fn survivors_are_adopted_stopped_or_orphaned() {
        let mut sync = Sync::new([
            ("kept".to_string(), DriverKind::Docker),
            ("unwanted".to_string(), DriverKind::Docker),
            ("orphan".to_string(), DriverKind::Exec),
        ]);
        let list = [
            assignment("kept", Desired::Run, DriverKind::Docker),
            assignment("unwanted", Desired::Stop, DriverKind::Docker),
            assignment("never-ran", Desired::Stop, DriverKind::Exec),
        ];
        // Adopted with the driver it runs under, whichever drivers the node has now.
        assert_eq!(
            sync.assign(&list, &[DriverKind::Exec]),
            [
                Command::Start { id: "kept".into(), driver: DriverKind::Docker, adopt: true },
                Command::StopSurvivor { id: "unwanted".into(), grace: Duration::from_secs(7) },
                Command::ReportStopped { id: "never-ran".into() },
                Command::StopOrphan { id: "orphan".into() },
            ]
        );
        assert_eq!(sync.assign(&list, &[DriverKind::Exec]), [], "each is done once");
    }

    #[test]
    fn an_instance_for_a_missing_driver_fails_once() {
        let mut sync = Sync::new([]);
        let a = assignment("a", Desired::Run, DriverKind::Docker);
        let failed = Command::NoDriver { id: "a".into(), driver: DriverKind::Docker };
        assert_eq!(sync.assign(std::slice::from_ref(&a), &[DriverKind::Exec]), [failed]);
        assert_eq!(sync.assign(&[a], &[DriverKind::Exec]), []);
    }
}
