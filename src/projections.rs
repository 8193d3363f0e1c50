//! The projections this build runs and can rebuild (`revo replay list`).

use revo_events::projection::NodesProjection;
use revo_events::{
    BudgetsProjection, Directory, LedgerProjection, ModelsProjection, PresenceProjection,
    Projection, RoomsProjection, RunsProjection, WorkflowsProjection,
};

/// A fresh instance of every projection.
pub fn all() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(NodesProjection::default()),
        Box::new(Directory::default()),
        Box::new(ModelsProjection::default()),
        Box::new(LedgerProjection::default()),
        Box::new(BudgetsProjection::default()),
        Box::new(RoomsProjection::default()),
        Box::new(PresenceProjection::default()),
        Box::new(WorkflowsProjection::default()),
        Box::new(RunsProjection::default()),
    ]
}

/// A fresh instance of the projection called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name()).collect()
}
