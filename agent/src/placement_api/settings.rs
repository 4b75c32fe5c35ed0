//! `[placement_api]`: where Placement is, how to authenticate, what the provider is called and
//! how often everything is checked. Unset `url` (the default): no reporting at all.

use std::path::PathBuf;
use std::time::Duration;

use hvagent_core::config::{integer, string};

/// What the reporter needs, checked to go together.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Placement's endpoint, without a trailing slash (`http://placement:8778`).
    pub url: String,
    pub auth: Auth,
    /// The resource provider's name; `None`: the host name.
    pub provider_name: Option<String>,
    /// The slow full check (provider, inventories, traits, allocations).
    pub interval: Duration,
    /// Whether allocations against the provider whose consumer has no claim here are removed
    /// (else only reported).
    pub remove_unclaimed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// A fixed token sent as `X-Auth-Token` (Placement's `noauth2`: `admin`).
    NoAuth { token: String },
    /// A Keystone v3 application credential (a file with `id` and `secret`), exchanged for a
    /// token at `auth_url`.
    Keystone {
        auth_url: String,
        credential_file: PathBuf,
    },
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// The keys as read, before they are checked to go together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keys {
    url: Option<String>,
    auth: Option<String>,
    token: Option<String>,
    auth_url: Option<String>,
    credential_file: Option<PathBuf>,
    provider_name: Option<String>,
    interval_seconds: Option<u64>,
    remove_unclaimed: Option<bool>,
}

impl Keys {
    /// Reads one key of `[placement_api]`; the error is the rule the value breaks.
    pub fn set(&mut self, key: &str, value: &toml::Value) -> Result<(), String> {
        match key {
            "url" => self.url = Some(http_url(value)?),
            "auth" => {
                let auth = string(value)?;
                if !matches!(auth.as_str(), "noauth" | "keystone") {
                    return Err(format!("{auth:?} is not one of \"noauth\", \"keystone\""));
                }
                self.auth = Some(auth);
            }
            "token" => {
                let token = string(value)?;
                // A header value: visible ASCII only.
                if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("must be non-empty printable ASCII without spaces".into());
                }
                self.token = Some(token);
            }
            "auth_url" => self.auth_url = Some(http_url(value)?),
            "credential_file" => {
                let s = string(value)?;
                let path = PathBuf::from(&s);
                if !path.is_absolute() {
                    return Err(format!("{s:?} must be an absolute path"));
                }
                self.credential_file = Some(path);
            }
            "provider_name" => {
                let name = string(value)?;
                // Placement's own limit for provider names (`string` refuses empty ones).
                if name.chars().count() > 200 {
                    return Err("must be at most 200 characters".into());
                }
                self.provider_name = Some(name);
            }
            "interval_seconds" => self.interval_seconds = Some(integer(value, 1, 86_400)?),
            "remove_unclaimed" => {
                self.remove_unclaimed =
                    Some(value.as_bool().ok_or_else(|| {
                        format!("must be true or false, got {}", value.type_str())
                    })?);
            }
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// The settings, or the key that is wrong and why. Keys without `url` are a mistake (the
    /// operator meant to report and did not), as are keys of the other auth method.
    pub fn check(self) -> Result<Option<Settings>, (&'static str, String)> {
        let Some(url) = self.url else {
            return match self.set_keys().first() {
                None => Ok(None),
                Some(key) => Err((
                    "placement_api.url",
                    format!("missing: placement_api.{key} is only used when url is set"),
                )),
            };
        };
        let auth = match self.auth.as_deref() {
            None => {
                return Err((
                    "placement_api.auth",
                    "missing: \"noauth\" (with token) or \"keystone\" (with auth_url and credential_file)".into(),
                ));
            }
            Some("noauth") => {
                if self.auth_url.is_some() || self.credential_file.is_some() {
                    return Err((
                        "placement_api.auth",
                        "\"noauth\" takes token only; auth_url and credential_file are for \"keystone\"".into(),
                    ));
                }
                let token = self.token.ok_or((
                    "placement_api.token",
                    "missing: auth = \"noauth\" needs a token (\"admin\" for Placement's noauth2)"
                        .to_string(),
                ))?;
                Auth::NoAuth { token }
            }
            Some(_) => {
                if self.token.is_some() {
                    return Err((
                        "placement_api.token",
                        "only used with auth = \"noauth\"; keystone tokens come from the credential".into(),
                    ));
                }
                let missing: Vec<&str> = [
                    ("auth_url", self.auth_url.is_none()),
                    ("credential_file", self.credential_file.is_none()),
                ]
                .into_iter()
                .filter_map(|(k, m)| m.then_some(k))
                .collect();
                match (self.auth_url, self.credential_file) {
                    (Some(auth_url), Some(credential_file)) => Auth::Keystone {
                        auth_url,
                        credential_file,
                    },
                    _ => {
                        return Err((
                            "placement_api.auth",
                            format!("\"keystone\" needs {}", missing.join(" and ")),
                        ));
                    }
                }
            }
        };
        Ok(Some(Settings {
            url,
            auth,
            provider_name: self.provider_name,
            interval: self
                .interval_seconds
                .map_or(DEFAULT_INTERVAL, Duration::from_secs),
            remove_unclaimed: self.remove_unclaimed.unwrap_or(false),
        }))
    }

    fn set_keys(&self) -> Vec<&'static str> {
        [
            ("auth", self.auth.is_some()),
            ("token", self.token.is_some()),
            ("auth_url", self.auth_url.is_some()),
            ("credential_file", self.credential_file.is_some()),
            ("provider_name", self.provider_name.is_some()),
            ("interval_seconds", self.interval_seconds.is_some()),
            ("remove_unclaimed", self.remove_unclaimed.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// An `http://` or `https://` URL with a host, without query or fragment; the trailing slash
/// is dropped so paths can be appended.
fn http_url(value: &toml::Value) -> Result<String, String> {
    let s = string(value)?;
    let url = reqwest::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?} is not an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a query or fragment"));
    }
    Ok(s.trim_end_matches('/').to_string())
}
