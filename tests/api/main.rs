//! The HTTP API against the real server, the real store and the real rule files: one
//! test binary, one module per subject, shared helpers in `support`.

mod support;

mod connections;
mod deadline;
mod errors;
mod events;
mod idempotency;
mod lifecycle;
mod limits;
mod money;
mod ops;
mod processors;
mod reload;
mod signatures;
mod tenancy;
mod versions;
