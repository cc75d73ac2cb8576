//! Host-name claims: one record per name the routers serve, written in the same commit as the
//! app or upstream that takes it, so two claims on one name can never both succeed.

use std::collections::{BTreeMap, BTreeSet};

use berth_core::hosts::{self, HostClaim, HostConflict, HostOwner};
use berth_core::{AppSpec, Level};
use berth_store::state::{State, Subject, encode, host_key};
use berth_store::{StoreError, Txn};

/// The host names an app's spec claims.
pub(crate) fn of_spec(spec: &AppSpec) -> BTreeMap<String, usize> {
    spec.services.iter().enumerate().map(|(i, s)| (hosts::service_host(s), i)).collect()
}

/// Every claim, by host.
pub(crate) fn all(state: &State) -> Result<BTreeMap<String, (HostOwner, u64)>, StoreError> {
    Ok(state
        .records::<HostClaim>("hosts/")?
        .into_iter()
        .map(|v| (v.value.host, (v.value.owner, v.mod_revision)))
        .collect())
}

/// Adds to `txn` what `owner` needs to hold exactly `wanted`: new claims (the name must still be
/// free when the commit lands), the claims it keeps (unchanged when it lands), and releases of
/// those it no longer names. The first conflict is returned with the name's index in `wanted`.
pub(crate) fn claim(
    state: &State,
    mut txn: Txn,
    owner: &HostOwner,
    wanted: &BTreeMap<String, usize>,
    domain: &str,
) -> Result<Result<Txn, (usize, HostConflict)>, StoreError> {
    let claims = all(state)?;
    for (host, index) in wanted {
        let present = claims.get(host);
        if let Err(conflict) = hosts::check(host, owner, present.map(|(o, _)| o), domain) {
            return Ok(Err((*index, conflict)));
        }
        txn = match present {
            Some((_, rev)) => txn.expect(host_key(host), *rev),
            None => txn
                .expect(host_key(host), 0)
                .put(host_key(host), encode(&HostClaim { host: host.clone(), owner: owner.clone() })),
        };
    }
    for (host, (held_by, rev)) in &claims {
        if held_by == owner && !wanted.contains_key(host) {
            txn = txn.expect(host_key(host), *rev).delete(host_key(host));
        }
    }
    Ok(Ok(txn))
}

/// Those of `wanted` that `owner` may claim now.
pub(crate) fn free_for(
    state: &State,
    owner: &HostOwner,
    mut wanted: BTreeMap<String, usize>,
    domain: &str,
) -> Result<BTreeMap<String, usize>, StoreError> {
    let claims = all(state)?;
    wanted.retain(|host, _| hosts::check(host, owner, claims.get(host).map(|(o, _)| o), domain).is_ok());
    Ok(wanted)
}

/// Drops every claim `owner` holds.
pub(crate) fn release(state: &State, mut txn: Txn, owner: &HostOwner) -> Result<Txn, StoreError> {
    for (host, (held_by, _)) in all(state)? {
        if held_by == *owner {
            txn = txn.delete(host_key(&host));
        }
    }
    Ok(txn)
}

/// Claims, for a store written before claims existed, the names its apps (oldest first) and
/// upstreams already serve. A name two of them served goes to the first; the others are told.
pub(crate) fn backfill(state: &State, domain: &str, now: berth_core::Millis) -> Result<(), StoreError> {
    let mut claims: BTreeMap<String, HostOwner> = all(state)?.into_iter().map(|(h, (o, _))| (h, o)).collect();
    let mut wanted: Vec<(String, HostOwner)> = Vec::new();
    let mut apps: Vec<_> = state.apps()?.into_iter().map(|v| v.value).collect();
    apps.sort_by_key(|a| a.created_at);
    for app in &apps {
        let owner = HostOwner::App(app.id());
        wanted.extend(of_spec(&app.spec).into_keys().map(|h| (h, owner.clone())));
    }
    let mut upstreams: Vec<berth_api::StaticUpstream> =
        state.records("upstreams/")?.into_iter().map(|v| v.value).collect();
    upstreams.sort_by_key(|u| u.updated_at);
    wanted.extend(upstreams.into_iter().map(|u| (u.name.clone(), HostOwner::Upstream(u.name))));
    let mut txn = Txn::default();
    let mut refused = BTreeSet::new();
    for (host, owner) in wanted {
        match hosts::check(&host, &owner, claims.get(&host), domain) {
            Ok(()) if !claims.contains_key(&host) => {
                txn = txn
                    .expect(host_key(&host), 0)
                    .put(host_key(&host), encode(&HostClaim { host: host.clone(), owner: owner.clone() }));
                claims.insert(host, owner);
            }
            Ok(()) => {}
            Err(conflict) => {
                refused.insert(format!("{owner}: {conflict}; the router does not serve it for them"));
            }
        }
    }
    for why in refused {
        txn = state.with_event(txn, now, Level::Warn, "host.conflict", Subject::default(), why);
    }
    if txn.is_empty() {
        return Ok(());
    }
    state.commit(txn).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(name: &str, services: &str) -> AppSpec {
        AppSpec::from_yaml(&format!("group: g\nname: {name}\nimage: i\nports: [80]\nservices: {services}\n"), None)
            .unwrap()
    }

    #[test]
    fn a_name_has_one_owner_and_is_released_when_no_longer_named() {
        let state = State::new(Arc::new(berth_store::MemoryStore::default())).unwrap();
        let a = HostOwner::App("g/a".into());
        let b = HostOwner::App("g/b".into());
        let txn = claim(&state, Txn::default(), &a, &of_spec(&spec("a", "[shop.example.com]")), "berth.local")
            .unwrap()
            .unwrap();
        state.commit(txn).unwrap();
        let (index, conflict) = claim(
            &state,
            Txn::default(),
            &b,
            &of_spec(&spec("b", "[x.example.com, SHOP.example.com:80]")),
            "berth.local",
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(index, 1);
        assert_eq!(conflict.to_string(), "host `shop.example.com` already belongs to app g/a");
        // A racing claim on a name that was free when read fails the whole commit.
        let racing = claim(&state, Txn::default(), &b, &of_spec(&spec("b", "[new.example.com]")), "berth.local")
            .unwrap()
            .unwrap();
        let first = claim(&state, Txn::default(), &a, &of_spec(&spec("a", "[new.example.com]")), "berth.local")
            .unwrap()
            .unwrap();
        state.commit(first).unwrap();
        assert!(matches!(state.commit(racing), Err(StoreError::Conflict(_))));
        // `a` now names only new.example.com: shop.example.com is free for `b`.
        let txn = claim(&state, Txn::default(), &b, &of_spec(&spec("b", "[shop.example.com]")), "berth.local")
            .unwrap()
            .unwrap();
        state.commit(txn).unwrap();
        let owners: Vec<(String, HostOwner)> = all(&state).unwrap().into_iter().map(|(h, (o, _))| (h, o)).collect();
        assert_eq!(owners, vec![("new.example.com".into(), a.clone()), ("shop.example.com".into(), b.clone())]);
        state.commit(release(&state, Txn::default(), &b).unwrap()).unwrap();
        assert_eq!(all(&state).unwrap().len(), 1);
    }
}
