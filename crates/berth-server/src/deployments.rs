//! Writes a deployment decision: the effects `berth_plan::deploy` returns with a changed app
//! (a new version, an outcome on a version, events) turned into one store transaction.

use std::collections::HashMap;

use berth_core::{AppVersion, Millis};
use berth_plan::deploy::Effect;
use berth_store::state::{State, Subject, encode, version_key};
use berth_store::{StoreError, Txn};

/// Adds `effects` for the app `app` to `txn`. An outcome lands on the version's record as this
/// transaction leaves it (a version written just before, or the stored one).
pub(crate) fn write(
    state: &State,
    mut txn: Txn,
    app: &str,
    effects: Vec<Effect>,
    now: Millis,
) -> Result<Txn, StoreError> {
    let mut written: HashMap<u64, AppVersion> = HashMap::new();
    for effect in effects {
        match effect {
            Effect::Version(record) => {
                txn = txn.put(version_key(app, record.version), encode(&record));
                written.insert(record.version, *record);
            }
            Effect::Outcome { version, outcome } => {
                let record = match written.remove(&version) {
                    Some(record) => Some(record),
                    None => state.record::<AppVersion>(&version_key(app, version))?.map(|v| v.value),
                };
                let Some(mut record) = record else { continue };
                record.outcome = Some(outcome);
                txn = txn.put(version_key(app, version), encode(&record));
                written.insert(version, record);
            }
            Effect::Event { level, kind, message } => {
                txn = state.with_event(txn, now, level, kind, Subject::app(app), message);
            }
        }
    }
    Ok(txn)
}
