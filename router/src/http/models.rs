//! `GET /v1/models`: the deployed models, in OpenAI's list shape.

use super::HttpState;
use super::openai::{ModelList, ModelObject};
use axum::Json;
use axum::extract::State;
use std::sync::Arc;

pub(crate) async fn list(State(state): State<Arc<HttpState>>) -> Json<ModelList> {
    let mut cards = state.backend.models();
    cards.sort_by(|a, b| a.name.cmp(&b.name));
    let data = cards
        .into_iter()
        .map(|card| ModelObject {
            id: card.name,
            object: "model",
            created: 0,
            owned_by: "strata",
            max_model_len: card.max_context,
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}
