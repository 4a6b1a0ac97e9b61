//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 description.

use axum::response::Json;
use serde_json::{Value, json};

pub(super) async fn document() -> Json<Value> {
    Json(spec())
}

fn spec() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let token = json!({"$ref": "#/components/schemas/TokenResponse"});
    let body = |schema: &str| {
        json!({"required": true, "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}},
            "application/x-www-form-urlencoded": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}
        }})
    };
    let errors = |ok: Value| {
        json!({
            "200": {"description": "success", "content": {"application/json": {"schema": ok}}},
            "400": {"description": "invalid request or refused by the identity provider", "content": {"application/json": {"schema": error}}},
            "401": {"description": "API key missing or wrong", "content": {"application/json": {"schema": error}}},
            "413": {"description": "body too large", "content": {"application/json": {"schema": error}}},
            "415": {"description": "unsupported content type", "content": {"application/json": {"schema": error}}},
            "500": {"description": "tollgate's own client credential is unusable (e.g. an unreadable federated assertion file)", "content": {"application/json": {"schema": error}}},
            "502": {"description": "identity provider failed", "content": {"application/json": {"schema": error}}},
            "503": {"description": "token store unavailable", "content": {"application/json": {"schema": error}}},
            "504": {"description": "identity provider timed out", "content": {"application/json": {"schema": error}}}
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "tollgate local token API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Wire-compatible with NAIS Texas: tokens from localhost instead of OAuth."},
        "paths": {
            "/api/v1/token": {"post": {"summary": "App token for a target: client credentials, or the jwt_bearer grant of a Maskinporten-style provider", "requestBody": body("TokenRequest"), "responses": errors(token.clone())}},
            "/api/v1/token/exchange": {"post": {"summary": "Exchange of a user token: On-Behalf-Of (Entra) or RFC 8693 token exchange (TokenX)", "requestBody": body("ExchangeRequest"), "responses": errors(token.clone())}},
            "/api/v1/introspect": {"post": {"summary": "Validate a token", "requestBody": body("IntrospectRequest"),
                "responses": {"200": {"description": "the token's claims with active: true, or active: false and why", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Introspection"}}}},
                              "400": {"description": "malformed body, or an identity provider that is not enabled", "content": {"application/json": {"schema": error}}}}}},
            "/api/v1/token/delegated": {"post": {"summary": "Delegated token for a user who logged in through tollgate", "requestBody": body("DelegatedRequest"), "responses": errors(token)}},
            "/api/v1/users/{oid}": {"delete": {"summary": "Forget a user's stored tokens",
                "parameters": [{"name": "oid", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "identity_provider", "in": "query", "required": false, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "forgotten"}, "503": {"description": "token store unavailable", "content": {"application/json": {"schema": error}}}}}}
        },
        "components": {"schemas": {
            "TokenRequest": {"type": "object", "required": ["identity_provider", "target"], "properties": {
                "identity_provider": {"type": "string", "examples": ["entra_id", "azuread", "maskinporten"]},
                "target": {"type": "string", "examples": ["api://cluster.namespace.app/.default", "nav:test/api"]},
                "resource": {"type": "string", "description": "RFC 8707 resource, sent in a jwt_bearer grant (Maskinporten)"},
                "authorization_details": {"type": "array", "items": {"type": "object"},
                    "description": "RFC 9396 authorization details, sent in a jwt_bearer grant; in a form body, the JSON text of the array"},
                "skip_cache": {"type": "boolean"}}},
            "ExchangeRequest": {"type": "object", "required": ["identity_provider", "target", "user_token"], "properties": {
                "identity_provider": {"type": "string", "examples": ["entra_id", "tokenx"]}, "target": {"type": "string"}, "user_token": {"type": "string"}, "skip_cache": {"type": "boolean"}}},
            "IntrospectRequest": {"type": "object", "required": ["identity_provider", "token"], "properties": {
                "identity_provider": {"type": "string"}, "token": {"type": "string"}}},
            "DelegatedRequest": {"type": "object", "required": ["identity_provider", "target"], "properties": {
                "identity_provider": {"type": "string"}, "target": {"type": "string"}, "user_oid": {"type": "string"}, "user_upn": {"type": "string"},
                "user_tid": {"type": "string", "description": "the user's tenant id: needed with user_upn when the provider accepts several tenants; with user_oid, only a user of this tenant is found"}}},
            "TokenResponse": {"type": "object", "required": ["access_token", "token_type", "expires_in"], "properties": {
                "access_token": {"type": "string"}, "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer"}}},
            "Introspection": {"type": "object", "required": ["active"], "properties": {"active": {"type": "boolean"}, "error": {"type": "string"}}, "additionalProperties": true},
            "Error": {"type": "object", "required": ["error", "error_description"], "properties": {
                "error": {"type": "string"}, "error_description": {"type": "string"}, "suberror": {"type": "string"},
                "claims": {"type": "string", "description": "Conditional Access claims challenge (JSON as a string)"},
                "error_codes": {"type": "array", "items": {"type": "integer"}}}}
        }}
    })
}
