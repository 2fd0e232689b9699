//! The object store clients: which one serves a URL (one builder per scheme, each client built once
//! per bucket or host and kept), and the preconditions that pin every GET to the version a HEAD saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::{
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    azure::{AzureConfigKey, MicrosoftAzureBuilder},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    http::HttpBuilder,
    local::LocalFileSystem,
    BackoffConfig, ClientConfigKey, GetOptions, ObjectMeta, ObjectStore, ObjectStoreScheme,
    RetryConfig,
};

use crate::{Error, Result};

/// The clients of one cache, by the base of their URL (scheme and bucket, or host), and how each
/// is configured: the standard environment variables (`from_env`), then these options.
pub(crate) struct Clients {
    retry: RetryConfig,
    /// object_store's configuration keys for the URL's scheme, applied after the environment.
    options: Vec<(String, String)>,
    built: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Clients {
    /// Clients that retry a request `retries` times within `retry_timeout` (object_store's
    /// `RetryConfig`) and take the `options` of `CacheOptions::store_options`.
    pub(crate) fn new(
        retries: usize,
        retry_timeout: Duration,
        options: Vec<(String, String)>,
    ) -> Clients {
        Clients {
            retry: RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: retries,
                retry_timeout,
            },
            options,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `url`'s bucket (or host), built on first use, and the object's location.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a URL that does not parse, a scheme this crate does not fetch
    /// from, an unknown option key, or a client that cannot be built.
    pub(crate) fn for_url(
        &self,
        url: &str,
    ) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path)> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.into(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let (scheme, location) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
        let base = &parsed[..url::Position::BeforePath];
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = built.get(base) {
            return Ok((s.clone(), location));
        }
        let store = self.build(scheme, url, &parsed)?;
        built.insert(base.to_string(), store.clone());
        Ok((store, location))
    }

    /// A new client for `scheme`: one builder per scheme, each reading its standard environment
    /// variables, then the options.
    fn build(
        &self,
        scheme: ObjectStoreScheme,
        url: &str,
        parsed: &url::Url,
    ) -> Result<Arc<dyn ObjectStore>> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.into(),
            reason,
        };
        let retry = self.retry.clone();
        // The clouds' builders are alike: the environment, then the URL, the retries, the options
        // (each key parsed as the scheme's own key type).
        macro_rules! cloud {
            ($builder:ident, $key:ident) => {{
                let b = $builder::from_env().with_url(url).with_retry(retry);
                self.configure(url, b, |b, k: $key, v| b.with_config(k, v))?
                    .build()
                    .map(|s| Arc::new(s) as _)
            }};
        }
        let built: object_store::Result<Arc<dyn ObjectStore>> = match scheme {
            ObjectStoreScheme::Local => {
                if let Some((k, _)) = self.options.first() {
                    return Err(invalid(format!("file:// takes no options (got {k:?})")));
                }
                Ok(Arc::new(LocalFileSystem::new()))
            }
            ObjectStoreScheme::AmazonS3 => cloud!(AmazonS3Builder, AmazonS3ConfigKey),
            ObjectStoreScheme::GoogleCloudStorage => {
                cloud!(GoogleCloudStorageBuilder, GoogleConfigKey)
            }
            ObjectStoreScheme::MicrosoftAzure => cloud!(MicrosoftAzureBuilder, AzureConfigKey),
            ObjectStoreScheme::Http => {
                let b = HttpBuilder::new()
                    .with_url(&parsed[..url::Position::BeforePath])
                    .with_retry(retry)
                    .with_config(
                        ClientConfigKey::AllowHttp,
                        (parsed.scheme() == "http").to_string(),
                    );
                self.configure(url, b, |b, k: ClientConfigKey, v| b.with_config(k, v))?
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            _ => {
                return Err(invalid(
                    "not a scheme mmtensor fetches from (s3, gs, az, abfs, http, https, file)"
                        .into(),
                ))
            }
        };
        built.map_err(|e| invalid(e.to_string()))
    }

    /// `builder` with every option applied by `with_config`, each key parsed (case-insensitively)
    /// as the scheme's own key type `K`.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a key that is not one of the scheme's.
    fn configure<B, K: std::str::FromStr>(
        &self,
        url: &str,
        builder: B,
        with_config: impl Fn(B, K, &str) -> B,
    ) -> Result<B> {
        self.options.iter().try_fold(builder, |b, (k, v)| {
            let key = k
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| Error::InvalidUrl {
                    url: url.into(),
                    reason: format!("unknown object store option {k:?} for this scheme"),
                })?;
            Ok(with_config(b, key, v))
        })
    }
}

/// The preconditions that pin a GET to the version of the object a HEAD described: `If-Match`
/// its ETag, or, from a server that sends none, `If-Unmodified-Since` its modification time.
pub(crate) fn unchanged_since(meta: &ObjectMeta) -> GetOptions {
    match &meta.e_tag {
        Some(tag) => GetOptions {
            if_match: Some(tag.clone()),
            ..GetOptions::default()
        },
        None => GetOptions {
            if_unmodified_since: Some(meta.last_modified),
            ..GetOptions::default()
        },
    }
}
