//! What the processor adapters need of the engine: a program's hook configurations and
//! its cards by the processor's card token. Both live in memory (bounded by the number
//! of programs × 4 and by the number of cards) and in the store.

use std::sync::Arc;

use super::responses::CardResponse;
use super::{live, Engine, Pending, Rejection};
use crate::processors::{HookConfig, Processor};
use crate::store::Write;

fn token_key(program: &str, token: &str) -> String {
    format!("{program}/{token}")
}

fn hook_key(program: &str, processor: Processor) -> String {
    format!("{program}/{}", processor.as_str())
}

impl Engine {
    /// The card of `program` that its processor calls `token`.
    pub fn card_for_token(&self, program: &str, token: &str) -> Option<String> {
        self.card_tokens
            .get(&token_key(program, token))
            .map(|c| c.clone())
    }

    /// Claims `token` for `card_id` within `program`: refused when another card of the
    /// program holds it.
    pub(super) fn claim_card_token(
        &self,
        program: &str,
        token: &str,
        card_id: &str,
    ) -> Result<(), Rejection> {
        crate::domain::check_id(token)
            .map_err(|e| Rejection::InvalidRequest(format!("processor_card_token {e}")))?;
        match self.card_tokens.entry(token_key(program, token)) {
            dashmap::Entry::Occupied(o) if o.get() != card_id => Err(Rejection::AlreadyExists {
                what: "processor_card_token",
                id: token.to_string(),
            }),
            dashmap::Entry::Occupied(_) => Ok(()),
            dashmap::Entry::Vacant(v) => {
                v.insert(card_id.to_string());
                Ok(())
            }
        }
    }

    pub(super) fn restore_card_token(&self, program: &str, token: &str, card_id: &str) {
        self.card_tokens
            .insert(token_key(program, token), card_id.to_string());
    }

    /// Sets or clears a card's processor token (unique within its program).
    pub fn set_processor_card_token(
        &self,
        key: &str,
        card_id: &str,
        token: Option<String>,
    ) -> Result<Pending<Arc<str>>, Rejection> {
        self.idempotent("card_token", key, &(card_id, &token), || {
            let card = self
                .card(card_id)
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            let c = live(&card)?;
            let mut r = self
                .records
                .get(card_id)
                .map(|r| r.clone())
                .ok_or_else(|| Rejection::UnknownCard(card_id.to_string()))?;
            if let Some(t) = &token {
                self.claim_card_token(&r.program, t, card_id)?;
            }
            if let Some(old) = r.processor_card_token.take() {
                if token.as_deref() != Some(old.as_str()) {
                    self.card_tokens.remove(&token_key(&r.program, &old));
                }
            }
            r.processor_card_token = token.clone();
            self.records.insert(card_id.to_string(), r.clone());
            let response: CardResponse = super::cards::card_response(&r, &c);
            Ok((response, vec![Write::Card(r)], Some(c)))
        })
    }

    /// A program's configuration of `processor`'s hook.
    pub fn hook_config(&self, program: &str, processor: Processor) -> Option<Arc<HookConfig>> {
        self.hook_configs
            .get(&hook_key(program, processor))
            .map(|c| c.clone())
    }

    /// Every hook configuration of a program.
    pub fn hook_configs(&self, program: &str) -> Vec<Arc<HookConfig>> {
        Processor::ALL
            .into_iter()
            .filter_map(|p| self.hook_config(program, p))
            .collect()
    }

    /// Sets (replaces) a program's configuration of a processor's hook.
    pub fn set_hook_config(
        &self,
        program: &str,
        config: HookConfig,
    ) -> Result<Pending<Arc<HookConfig>>, Rejection> {
        if !self.programs.contains_key(program) {
            return Err(Rejection::UnknownProgram(program.to_string()));
        }
        let json =
            serde_json::to_string(&config).map_err(|e| Rejection::InvalidRequest(e.to_string()))?;
        let config = Arc::new(config);
        self.hook_configs
            .insert(hook_key(program, config.processor), config.clone());
        let seq = self.persist(vec![Write::HookConfig {
            program: program.to_string(),
            processor: config.processor.as_str().to_string(),
            config: Some(json),
        }]);
        Ok(self.pending(config, seq))
    }

    /// Removes a program's hook for `processor`; its calls are refused from then on.
    pub fn delete_hook_config(
        &self,
        program: &str,
        processor: Processor,
    ) -> Result<Pending<()>, Rejection> {
        if self
            .hook_configs
            .remove(&hook_key(program, processor))
            .is_none()
        {
            return Err(Rejection::InvalidRequest(format!(
                "program `{program}` has no {} hook",
                processor.as_str()
            )));
        }
        let seq = self.persist(vec![Write::HookConfig {
            program: program.to_string(),
            processor: processor.as_str().to_string(),
            config: None,
        }]);
        Ok(self.pending((), seq))
    }

    pub(super) fn restore_hook_config(&self, program: &str, json: &str) -> Result<(), String> {
        let c: HookConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        self.hook_configs
            .insert(hook_key(program, c.processor), Arc::new(c));
        Ok(())
    }
}
