//! Placement's HTTP API as the reporter uses it: every call at one microversion, with the
//! token of the configured auth, counted by method, and answered with typed errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use hvagent_core::counts::KindCounts;
use hvagent_core::sync::lock;
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::keystone::{self, AuthError, Token};
use super::settings::Auth;
use super::sync::{Inventory, Resources};

/// 1.39: consumer generations (1.28), consumer types (1.38), `in:` traits (1.39).
pub const MICROVERSION: &str = "placement 1.39";

/// One call may take this long, connecting included; Placement answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: Placement is down, unreachable or too slow.
    #[error("{method} {path}: no answer: {problem}")]
    Unreachable {
        method: Method,
        path: String,
        problem: String,
    },
    /// An answer with an error status; `code` is Placement's error code where it gave one
    /// (`placement.concurrent_update`, ...).
    #[error("{method} {path}: HTTP {status}: {detail}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        code: Option<String>,
        detail: String,
    },
    #[error("{method} {path}: unexpected answer: {problem}")]
    Answer {
        method: Method,
        path: String,
        problem: String,
    },
    #[error("keystone: {0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Setup(String),
}

impl ApiError {
    /// A generation conflict: someone else changed the provider or consumer meanwhile.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Status { status: 409, code, .. }
            if code.as_deref() == Some("placement.concurrent_update"))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }

    /// The `PlacementSync` condition's reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Unreachable { .. } => "Unreachable",
            ApiError::Auth(_)
            | ApiError::Status {
                status: 401 | 403, ..
            } => "Unauthorized",
            _ => "Refused",
        }
    }
}

/// A resource provider: its UUID and generation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Provider {
    pub uuid: String,
    pub name: String,
    pub generation: u64,
}

/// Everything one consumer holds, on every provider.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Consumer {
    #[serde(default)]
    pub allocations: BTreeMap<String, ProviderPart>,
    pub consumer_generation: Option<u64>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub consumer_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ProviderPart {
    pub resources: Resources,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    token: Mutex<Option<Token>>,
    /// Calls made, by HTTP method (`hvagent_placement_api_calls_total`).
    pub calls: KindCounts,
}

#[derive(Deserialize)]
struct Providers {
    resource_providers: Vec<Provider>,
}

#[derive(Deserialize)]
struct Inventories {
    inventories: BTreeMap<String, Inventory>,
    resource_provider_generation: u64,
}

#[derive(Deserialize)]
struct Traits {
    traits: BTreeSet<String>,
    resource_provider_generation: u64,
}

#[derive(Deserialize)]
struct ProviderAllocations {
    allocations: BTreeMap<String, ProviderPart>,
}

#[derive(Deserialize)]
struct Generation {
    resource_provider_generation: u64,
}

#[derive(Deserialize)]
struct Errors {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    detail: String,
    code: Option<String>,
}

impl Client {
    pub fn new(base: &str, auth: Auth, calls: KindCounts) -> Result<Client, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ApiError::Setup(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.to_string(),
            auth,
            token: Mutex::new(None),
            calls,
        })
    }

    /// The provider named `name`, if there is one.
    pub async fn provider_by_name(&self, name: &str) -> Result<Option<Provider>, ApiError> {
        let path = format!("/resource_providers?name={}", query_escape(name));
        let found: Providers = self.call(Method::GET, &path, None).await?;
        Ok(found.resource_providers.into_iter().next())
    }

    pub async fn provider(&self, uuid: &str) -> Result<Option<Provider>, ApiError> {
        match self
            .call(Method::GET, &format!("/resource_providers/{uuid}"), None)
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_provider(&self, name: &str, uuid: &str) -> Result<Provider, ApiError> {
        let body = serde_json::json!({ "name": name, "uuid": uuid });
        self.call(Method::POST, "/resource_providers", Some(body))
            .await
    }

    /// The provider's inventories and generation.
    pub async fn inventories(
        &self,
        uuid: &str,
    ) -> Result<(u64, BTreeMap<String, Inventory>), ApiError> {
        let path = format!("/resource_providers/{uuid}/inventories");
        let i: Inventories = self.call(Method::GET, &path, None).await?;
        Ok((i.resource_provider_generation, i.inventories))
    }

    pub async fn put_inventories(
        &self,
        uuid: &str,
        generation: u64,
        inventories: &BTreeMap<String, Inventory>,
    ) -> Result<u64, ApiError> {
        let path = format!("/resource_providers/{uuid}/inventories");
        let body = serde_json::json!({
            "resource_provider_generation": generation,
            "inventories": inventories,
        });
        let g: Generation = self.call(Method::PUT, &path, Some(body)).await?;
        Ok(g.resource_provider_generation)
    }

    pub async fn traits(&self, uuid: &str) -> Result<(u64, BTreeSet<String>), ApiError> {
        let path = format!("/resource_providers/{uuid}/traits");
        let t: Traits = self.call(Method::GET, &path, None).await?;
        Ok((t.resource_provider_generation, t.traits))
    }

    pub async fn put_traits(
        &self,
        uuid: &str,
        generation: u64,
        traits: &BTreeSet<String>,
    ) -> Result<u64, ApiError> {
        let path = format!("/resource_providers/{uuid}/traits");
        let body = serde_json::json!({
            "resource_provider_generation": generation,
            "traits": traits,
        });
        let g: Generation = self.call(Method::PUT, &path, Some(body)).await?;
        Ok(g.resource_provider_generation)
    }

    /// Creates a custom trait or resource class (`kind`: `traits`, `resource_classes`);
    /// one that exists is left as it is.
    pub async fn ensure_custom(&self, kind: &str, name: &str) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, &format!("/{kind}/{name}"), None)
            .await
    }

    /// What each consumer holds on the provider.
    pub async fn provider_allocations(
        &self,
        uuid: &str,
    ) -> Result<BTreeMap<String, Resources>, ApiError> {
        let path = format!("/resource_providers/{uuid}/allocations");
        let a: ProviderAllocations = self.call(Method::GET, &path, None).await?;
        Ok(a.allocations
            .into_iter()
            .map(|(c, p)| (c, p.resources))
            .collect())
    }

    pub async fn consumer(&self, consumer: &str) -> Result<Consumer, ApiError> {
        self.call(Method::GET, &format!("/allocations/{consumer}"), None)
            .await
    }

    /// Writes a consumer's allocations (every provider's part), or removes them all when
    /// `body` has none; the consumer generation in `body` makes it conditional.
    pub async fn put_consumer(
        &self,
        consumer: &str,
        body: serde_json::Value,
    ) -> Result<(), ApiError> {
        self.call_empty(Method::PUT, &format!("/allocations/{consumer}"), Some(body))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ApiError> {
        let text = self.send(method.clone(), path, body).await?;
        serde_json::from_str(&text).map_err(|e| ApiError::Answer {
            method,
            path: path.to_string(),
            problem: e.to_string(),
        })
    }

    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), ApiError> {
        self.send(method, path, body).await.map(drop)
    }

    /// One call; a 401 with a Keystone token asks for a new token and tries once more (the
    /// token may have been revoked before its time).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, ApiError> {
        match self.send_once(method.clone(), path, body.clone()).await {
            Err(ApiError::Status { status: 401, .. })
                if matches!(self.auth, Auth::Keystone { .. }) =>
            {
                *lock(&self.token) = None;
                self.send_once(method, path, body).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, ApiError> {
        let token = self.token().await?;
        self.calls.inc(method.as_str());
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", MICROVERSION)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let unreachable = |e: reqwest::Error| ApiError::Unreachable {
            method: method.clone(),
            path: path.to_string(),
            problem: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(text);
        }
        let (code, detail) = match serde_json::from_str::<Errors>(&text) {
            Ok(Errors { errors }) if !errors.is_empty() => {
                (errors[0].code.clone(), errors[0].detail.clone())
            }
            _ => (None, text.chars().take(300).collect()),
        };
        Err(ApiError::Status {
            method,
            path: path.to_string(),
            status: status.as_u16(),
            code,
            detail: detail.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }

    /// The token to send: the configured one, or a Keystone token renewed before it expires.
    async fn token(&self) -> Result<String, ApiError> {
        let (auth_url, credential_file) = match &self.auth {
            Auth::NoAuth { token } => return Ok(token.clone()),
            Auth::Keystone {
                auth_url,
                credential_file,
            } => (auth_url, credential_file),
        };
        let now = hvagent_core::now_unix();
        if let Some(token) = lock(&self.token).as_ref().filter(|t| t.fresh(now)) {
            return Ok(token.value.clone());
        }
        self.calls.inc("keystone");
        let token = keystone::issue(&self.http, auth_url, credential_file).await?;
        tracing::debug!(
            expires_unix = token.expires_unix,
            "placement_api: new Keystone token"
        );
        let value = token.value.clone();
        *lock(&self.token) = Some(token);
        Ok(value)
    }
}

/// A query parameter value, percent-encoded (provider names may hold anything).
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
