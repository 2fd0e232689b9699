//! Every object storage backend the remote crate fetches from, each against a local server that
//! `scripts/test.sh` starts and names in the environment:
//!
//! | backend | server                  | variables                                          |
//! | ------- | ----------------------- | -------------------------------------------------- |
//! | S3      | moto                    | `MMT_TEST_S3_ENDPOINT`                             |
//! | GCS     | fake-gcs-server         | `MMT_TEST_GCS_ENDPOINT`                            |
//! | Azure   | Azurite (blob service)  | `MMT_TEST_AZURE_ENDPOINT` (the account's URL)      |
//! | HTTP    | nginx (static files)    | `MMT_TEST_HTTP_ENDPOINT`, `MMT_TEST_HTTP_ROOT`     |
//! | HTTP    | nginx, `etag off`       | `MMT_TEST_HTTP_NO_ETAG_ENDPOINT` (the same root)   |
//!
//! A test loops over [`backends`] and runs the same checks on each: [`Backend::place`] is a new
//! bucket (container, folder) of its own, [`Backend::put`] uploads an object the way that server
//! takes it, [`Backend::cache_options`] configures a cache for it.

use std::path::{Path, PathBuf};

use mmtensor_remote::CacheOptions;
use object_store::aws::AmazonS3Builder;
use object_store::azure::{
    AzureAccessKey, AzureAuthorizer, AzureCredential, MicrosoftAzureBuilder,
};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::{ObjectStore, ObjectStoreExt};

use super::{bucket, create_bucket, each_dataset_file, http_request, required_env, s3_options};

/// Azurite's well-known account and its key (documented by Microsoft for the emulator).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which protocol a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    S3,
    Gcs,
    Azure,
    Http,
}

/// One object storage server the tests run against.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The protocol and the server, as failures name it: "gcs (fake-gcs-server)".
    pub name: &'static str,
    pub kind: Kind,
    /// `http://127.0.0.1:PORT` (Azure: the account's URL, `.../devstoreaccount1`).
    endpoint: String,
    /// HTTP: the folder the server serves, which `put` writes into.
    root: Option<PathBuf>,
}

/// Every backend whose server the environment names. Under `CI=true` a missing one panics (CI
/// must run them all); elsewhere it is skipped with a printed reason.
pub fn backends(test: &str) -> Vec<Backend> {
    let mut all = Vec::new();
    if let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", test) {
        all.push(Backend::s3(&endpoint));
    }
    let mut add = |name, kind, var: &str| {
        if let Some(endpoint) = required_env(var, test) {
            all.push(Backend {
                name,
                kind,
                endpoint: endpoint.trim_end_matches('/').to_string(),
                root: None,
            });
        }
    };
    add("gcs (fake-gcs-server)", Kind::Gcs, "MMT_TEST_GCS_ENDPOINT");
    add("azure (azurite)", Kind::Azure, "MMT_TEST_AZURE_ENDPOINT");
    if let Some(root) = required_env("MMT_TEST_HTTP_ROOT", test) {
        // One folder served twice: with ETags, and without (GETs then carry If-Unmodified-Since).
        for (name, var) in [
            ("http (nginx)", "MMT_TEST_HTTP_ENDPOINT"),
            ("http (nginx, no ETag)", "MMT_TEST_HTTP_NO_ETAG_ENDPOINT"),
        ] {
            if let Some(endpoint) = required_env(var, test) {
                all.push(Backend {
                    name,
                    kind: Kind::Http,
                    endpoint: endpoint.trim_end_matches('/').to_string(),
                    root: Some(PathBuf::from(&root)),
                });
            }
        }
    }
    all
}

/// Runs `check` on every backend, each to its end even when one fails, then fails naming every
/// backend whose check panicked.
pub fn for_each_backend(test: &str, check: impl Fn(&Backend)) {
    let mut failed = Vec::new();
    for b in backends(test) {
        eprintln!("{test}: {}", b.name);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&b)));
        if result.is_err() {
            failed.push(b.name);
        }
    }
    assert!(failed.is_empty(), "{test} failed on {failed:?}");
}

impl Backend {
    /// The S3 server at `endpoint` (a moto server a test started itself, say).
    pub fn s3(endpoint: &str) -> Backend {
        Backend {
            name: "s3 (moto)",
            kind: Kind::S3,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            root: None,
        }
    }

    /// A new, empty bucket (container; for HTTP, a folder) of this backend's own, as the URL
    /// that objects' URLs begin with: `s3://bucket`, `gs://bucket`, `az://container`,
    /// `http://127.0.0.1:PORT/folder`. `name` is lower-case letters and single hyphens.
    pub fn place(&self, name: &str) -> String {
        let b = bucket(name);
        match self.kind {
            Kind::S3 => {
                create_bucket(&self.endpoint, &b);
                format!("s3://{b}")
            }
            Kind::Gcs => {
                let body = format!("{{\"name\":\"{b}\"}}");
                let json = [("Content-Type".to_string(), "application/json".to_string())];
                let (status, reply) = http_request(
                    &self.endpoint,
                    "POST",
                    "/storage/v1/b",
                    &json,
                    body.as_bytes(),
                );
                assert_eq!(status, 200, "create GCS bucket {b}: {reply}");
                format!("gs://{b}")
            }
            Kind::Azure => {
                self.create_container(&b);
                format!("az://{b}")
            }
            Kind::Http => {
                std::fs::create_dir(self.root().join(&b)).unwrap();
                format!("{}/{b}", self.endpoint)
            }
        }
    }

    /// The URL of a bucket (container, folder) that does not exist.
    pub fn missing_place(&self) -> String {
        let b = bucket("never-created");
        match self.kind {
            Kind::S3 => format!("s3://{b}"),
            Kind::Gcs => format!("gs://{b}"),
            Kind::Azure => format!("az://{b}"),
            Kind::Http => format!("{}/{b}", self.endpoint),
        }
    }

    /// object_store's keys for this server (`CacheOptions::store_options`): applied after the
    /// standard environment variables, which hold moto's `AWS_*` ones in `scripts/test.sh`.
    pub fn store_options(&self) -> Vec<(String, String)> {
        let e = self.endpoint.as_str();
        let pairs: Vec<(&str, &str)> = match self.kind {
            Kind::S3 => return s3_options(e),
            // fake-gcs-server checks no credentials: no token is fetched or sent.
            Kind::Gcs => vec![
                ("google_base_url", e),
                ("google_skip_signature", "true"),
                ("allow_http", "true"),
            ],
            // The account's URL as the endpoint (path style), and its shared key.
            Kind::Azure => vec![
                ("azure_storage_account_name", AZURITE_ACCOUNT),
                ("azure_storage_account_key", AZURITE_KEY),
                ("azure_storage_endpoint", e),
                ("allow_http", "true"),
            ],
            // The crate allows plain HTTP for http:// URLs itself.
            Kind::Http => vec![],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Cache options for this server: its `store_options`, `part_size` bytes per GET,
    /// `concurrency` GETs at once, and short retries (a local server answers or is broken).
    pub fn cache_options(&self, part_size: u64, concurrency: usize) -> CacheOptions {
        let mut o = CacheOptions::default();
        o.part_size = part_size;
        o.concurrency = concurrency;
        o.retries = 2;
        o.retry_timeout = std::time::Duration::from_secs(5);
        o.backoff = std::time::Duration::from_millis(20);
        o.store_options = self.store_options();
        o
    }

    /// Whether the server lists objects (HTTP cannot): a missing object's error then says what
    /// is there instead (`Error::NotFound`'s note).
    pub fn lists(&self) -> bool {
        self.kind != Kind::Http
    }

    /// Uploads `bytes` as the object at `url` (under one of this backend's places), replacing
    /// any object there.
    pub fn put(&self, url: &str, bytes: &[u8]) {
        let (bucket, key) = self.split(url);
        match self.kind {
            Kind::S3 | Kind::Azure => {
                let store = self.object_store(&bucket);
                block_on(store.put(&key.as_str().into(), bytes.to_vec().into()))
                    .unwrap_or_else(|e| panic!("{}: put {url}: {e}", self.name));
            }
            // fake-gcs-server takes uploads through the JSON API only (its XML PUT, which
            // object_store sends, is a signed-URL upload it refuses without a form).
            Kind::Gcs => {
                let path = format!(
                    "/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
                    encode(&key)
                );
                let octets = [(
                    "Content-Type".to_string(),
                    "application/octet-stream".to_string(),
                )];
                let (status, reply) = http_request(&self.endpoint, "POST", &path, &octets, bytes);
                assert_eq!(status, 200, "{}: put {url}: {reply}", self.name);
            }
            // Written beside it and renamed into place: nginx never serves half a file.
            Kind::Http => {
                let path = self.root().join(&bucket).join(&key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let tmp = path.with_extension("uploading");
                std::fs::write(&tmp, bytes).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
        }
    }

    /// Deletes the object at `url`.
    pub fn delete(&self, url: &str) {
        let (bucket, key) = self.split(url);
        match self.kind {
            Kind::S3 | Kind::Azure => {
                let store = self.object_store(&bucket);
                block_on(store.delete(&key.as_str().into()))
                    .unwrap_or_else(|e| panic!("{}: delete {url}: {e}", self.name));
            }
            Kind::Gcs => {
                let path = format!("/storage/v1/b/{bucket}/o/{}", encode(&key));
                let (status, reply) = http_request(&self.endpoint, "DELETE", &path, &[], &[]);
                assert!(
                    status == 200 || status == 204,
                    "{}: delete {url}: {status} {reply}",
                    self.name
                );
            }
            Kind::Http => std::fs::remove_file(self.root().join(&bucket).join(&key)).unwrap(),
        }
    }

    /// Uploads the dataset folder `dir` under `prefix` (a URL under a place; no trailing
    /// slash), but for the file `skip`.
    pub fn put_dataset(&self, prefix: &str, dir: &Path, skip: Option<&str>) {
        each_dataset_file(dir, skip, |name, bytes| {
            self.put(&format!("{prefix}/{name}"), &bytes)
        });
    }

    /// The bucket (container, folder) and the key of `url`.
    fn split(&self, url: &str) -> (String, String) {
        let rest = match self.kind {
            Kind::Http => url
                .strip_prefix(&format!("{}/", self.endpoint))
                .unwrap_or_else(|| panic!("{url} is not under {}", self.endpoint)),
            _ => url.split_once("://").unwrap().1,
        };
        let (bucket, key) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("{url} names no object"));
        (bucket.to_string(), key.to_string())
    }

    fn root(&self) -> &Path {
        self.root.as_deref().expect("an HTTP backend has a root")
    }

    /// object_store's client of `bucket` (S3, Azure), configured as a cache's would be.
    fn object_store(&self, bucket: &str) -> Box<dyn ObjectStore> {
        match self.kind {
            Kind::S3 => {
                let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
                for (k, v) in self.store_options() {
                    b = b.with_config(k.parse().unwrap(), v);
                }
                Box::new(b.build().unwrap())
            }
            Kind::Azure => {
                let mut b = MicrosoftAzureBuilder::new().with_container_name(bucket);
                for (k, v) in self.store_options() {
                    b = b.with_config(k.parse().unwrap(), v);
                }
                Box::new(b.build().unwrap())
            }
            _ => unreachable!("{} puts objects without object_store", self.name),
        }
    }

    /// Creates an Azure container: a request signed with the account's shared key by
    /// object_store's own authorizer (object_store has no call to create a container).
    fn create_container(&self, container: &str) {
        let path_and_query = format!(
            "{}/{container}?restype=container",
            url::Url::parse(&self.endpoint).unwrap().path()
        );
        let mut request = HttpRequest::new(HttpRequestBody::empty());
        *request.method_mut() = "PUT".parse().unwrap();
        *request.uri_mut() = format!("{}/{container}?restype=container", self.endpoint)
            .parse()
            .unwrap();
        let key = AzureCredential::AccessKey(AzureAccessKey::try_new(AZURITE_KEY).unwrap());
        AzureAuthorizer::new(&key, AZURITE_ACCOUNT).authorize(&mut request);
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let (status, reply) = http_request(&self.endpoint, "PUT", &path_and_query, &headers, &[]);
        assert_eq!(status, 201, "create Azure container {container}: {reply}");
    }
}

/// `s` percent-encoded as one query value or path segment (`/` included).
fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Runs `f` to its end on a runtime of its own (the tests are synchronous, as the cache is).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
