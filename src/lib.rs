//! spendgate: a low-latency authorization-decision and spend-control engine for card
//! issuers.
//!
//! The decision path, top to bottom:
//! - [`service::Engine::authorize`] takes the card's lock, builds a [`decision::CardView`],
//! - [`decision::decide`] (pure) runs the checks and the [`policy`] rules,
//! - [`service::CardState::apply`] applies the decision's effects (velocity windows,
//!   location, funds) before the lock is released.

pub mod analysis;
pub mod clock;
pub mod cluster;
pub mod decision;
pub mod delivery;
pub mod domain;
pub mod geo;
pub mod http;
pub mod issuing;
pub mod ledger;
pub mod money;
pub mod policy;
pub mod policy_tests;
pub mod processors;
pub mod reconcile;
pub mod service;
pub mod store;
pub mod velocity;
