//! What routers follow: the route snapshot (a blocking watch), static upstreams and rule scripts.

use berth_api::{RouteApp, RouteInstance, RouteSnapshot, RuleScript, StaticUpstream};

use berth_core::Desired;
use berth_core::hosts::{HostOwner, service_host};
use berth_store::StoreError;

use crate::Shared;

pub(crate) fn route_snapshot(shared: &Shared) -> Result<RouteSnapshot, StoreError> {
    let index = shared.state.store().revision();
    let instances = shared.instances()?;
    // Nothing is sent to a disconnected node's instances: nothing says they still answer.
    let cut_off = shared.cut_off_nodes()?;
    let claims = crate::hosts::all(&shared.state)?;
    // A name serves its claimant only (an app rolled back to a spec naming a host another has
    // taken since does not get it back).
    let serves = |owner: &HostOwner, host: &str| claims.get(host).is_none_or(|(o, _)| o == owner);
    let apps = shared
        .state
        .apps()?
        .into_iter()
        .map(|a| {
            let app = a.value;
            let id = app.id();
            let instances = instances
                .iter()
                .filter(|i| i.app == id && i.state.is_live())
                .map(|i| RouteInstance {
                    id: i.id.clone(),
                    version: i.version,
                    host: i.host.clone(),
                    host_ports: i.host_ports.clone(),
                    ready: i.desired == Desired::Run
                        && i.is_ready()
                        && app.serves(i.version)
                        && !cut_off.contains(&i.node),
                    draining: i.desired == Desired::Stop,
                })
                .collect();
            RouteApp {
                id,
                name: app.spec.name.clone(),
                group: app.spec.group.clone(),
                zones: app.spec.zones.clone(),
                services: app
                    .spec
                    .services
                    .iter()
                    .filter(|s| serves(&HostOwner::App(app.id()), &service_host(s)))
                    .cloned()
                    .collect(),
                ports: app.spec.ports.clone(),
                health: app.spec.health.clone(),
                balance: app.spec.balance.clone(),
                slow_start: app.spec.slow_start,
                instances,
            }
        })
        .collect();
    let upstreams = shared
        .state
        .records::<StaticUpstream>("upstreams/")?
        .into_iter()
        .map(|v| v.value)
        .filter(|u| serves(&HostOwner::Upstream(u.name.clone()), &u.name))
        .collect();
    let rules = shared.state.records::<RuleScript>("rules/")?.into_iter().map(|v| v.value).collect();
    Ok(RouteSnapshot { index, apps, upstreams, rules, domain: shared.domain.clone() })
}

/// A router not heard from for this long is gone: it no longer holds up a drain.
pub(crate) const ROUTER_SILENCE_MS: i64 = 2_000;
