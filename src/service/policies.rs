//! Policy versions: every version that goes live is stored with its source (file text
//! and scripts), when and by whom; a stored version can be shown, compiled again and put
//! live (a rollback: the HTTP edge runs its embedded tests in between, as for a reload).

use std::sync::Arc;

use super::{Engine, Rejection};
use crate::policy::{compile_source, CompiledPolicy, PolicySet, PolicySource};
use crate::store::{PolicyActivation, Write};

impl Engine {
    /// Stores the live version of every policy whose last stored activation differs (at
    /// start-up, after a reload), durably. Returns the (policy, version) pairs recorded.
    pub fn record_policy_activations(&self, by: &str) -> Result<Vec<(String, String)>, Rejection> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let set = self.policies();
        let mut writes = Vec::new();
        let mut recorded = Vec::new();
        for p in set.policies.values() {
            let last = store
                .policy_activations(&p.name)
                .map_err(|_| Rejection::HistoryUnavailable)?;
            if last.first().is_some_and(|a| a.version == p.version) {
                continue;
            }
            writes.push(activation(
                &p.name,
                &p.version,
                &p.source,
                self.now_ms(),
                by,
            ));
            recorded.push((p.name.clone(), p.version.clone()));
        }
        if !writes.is_empty() {
            store.commit(writes);
        }
        Ok(recorded)
    }

    /// A policy's activations, newest first.
    pub fn policy_versions(&self, policy: &str) -> Result<Vec<PolicyActivation>, Rejection> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let v = store
            .policy_activations(policy)
            .map_err(|_| Rejection::HistoryUnavailable)?;
        if v.is_empty() {
            return Err(Rejection::UnknownPolicyVersion {
                policy: policy.to_string(),
                version: None,
            });
        }
        Ok(v)
    }

    /// A stored version's source.
    pub fn policy_source(&self, policy: &str, version: &str) -> Result<PolicySource, Rejection> {
        let missing = || Rejection::UnknownPolicyVersion {
            policy: policy.to_string(),
            version: Some(version.to_string()),
        };
        let store = self.store.as_ref().ok_or_else(missing)?;
        let text = store
            .policy_source(policy, version)
            .map_err(|_| Rejection::HistoryUnavailable)?
            .ok_or_else(missing)?;
        serde_json::from_str(&text).map_err(|e| Rejection::InvalidPolicy(e.to_string()))
    }

    /// A stored version of `policy`, compiled again from its stored source with today's
    /// FX table (the caller runs its embedded tests before [`Engine::activate_policy`]).
    pub fn stored_policy(&self, policy: &str, version: &str) -> Result<CompiledPolicy, Rejection> {
        let source = self.policy_source(policy, version)?;
        let compiled = compile_source(&source, self.policies().fx.clone()).map_err(|errors| {
            Rejection::InvalidPolicy(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        if compiled.name != policy || compiled.version != version {
            return Err(Rejection::InvalidPolicy(format!(
                "the stored source compiles to {} version {}, not {policy} version {version}",
                compiled.name, compiled.version
            )));
        }
        Ok(compiled)
    }

    /// Puts `compiled` live in place of the policy of its name and records the
    /// activation. The rules directory is not touched: a later reload or restart reads
    /// the files again.
    pub fn activate_policy(&self, compiled: CompiledPolicy, by: &str) -> Result<(), Rejection> {
        let current = self.policies();
        if !current.policies.contains_key(&compiled.name) {
            return Err(Rejection::UnknownPolicyVersion {
                policy: compiled.name.clone(),
                version: None,
            });
        }
        let write = activation(
            &compiled.name,
            &compiled.version,
            &compiled.source,
            self.now_ms(),
            by,
        );
        let mut policies = current.policies.clone();
        policies.insert(compiled.name.clone(), Arc::new(compiled));
        self.swap_policies(PolicySet {
            dir: current.dir.clone(),
            policies,
            fx: current.fx.clone(),
        })?;
        if let Some(store) = &self.store {
            store.commit(vec![write]);
        }
        Ok(())
    }
}

fn activation(policy: &str, version: &str, source: &PolicySource, at_ms: i64, by: &str) -> Write {
    Write::PolicyActivated {
        policy: policy.to_string(),
        version: version.to_string(),
        // A struct of strings always serializes.
        source: serde_json::to_string(source).unwrap_or_default(),
        at_ms,
        by: by.to_string(),
    }
}
