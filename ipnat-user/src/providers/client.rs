//! What both clouds' clients share: the metadata service's client in token mode, its errors,
//! transport errors told once, RFC 3986 percent-encoding, and how many addresses to ask for.

use std::time::Duration;

use thiserror::Error;

/// What the clouds' signatures and form bodies leave unescaped: RFC 3986's unreserved
/// characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encoding as both clouds' signatures define it (RFC 3986, unreserved left alone).
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// How many secondary private addresses to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assign {
    /// Any free addresses of the subnet.
    Count(u32),
    /// These addresses.
    List(Vec<std::net::Ipv4Addr>),
}

impl Assign {
    pub fn len(&self) -> usize {
        match self {
            Assign::Count(n) => *n as usize,
            Assign::List(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request parameters: `count_key` = N, or `list_key.1`, `list_key.2`, ...
    pub fn params(&self, count_key: &str, list_key: &str) -> Vec<(String, String)> {
        match self {
            Assign::Count(n) => vec![(count_key.to_owned(), n.to_string())],
            Assign::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{list_key}.{}", i + 1), a.to_string()))
                .collect(),
        }
    }
}

/// A transport error told once: reqwest's message without its URL (the error that carries it
/// names the URL already), then each cause beneath it ("operation timed out", "Connection
/// refused") that the text does not already hold.
pub(crate) fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// NICs read at once from a metadata service.
pub const CONCURRENT_NICS: usize = 16;

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("instance metadata at {url}: {why} (is the metadata service reachable from here?)")]
    Http { url: String, why: String },
    #[error("instance metadata at {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("instance metadata at {url} returned {value:?}, which is not {what}")]
    Garbage {
        url: String,
        value: String,
        what: &'static str,
    },
}

/// The cloud APIs ipnat calls besides the metadata services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// AWS EC2 (Query API, XML, SigV4).
    Ec2,
    /// Alibaba Cloud ECS OpenAPI (RPC style, JSON, signature v1).
    Ecs,
}

impl Api {
    /// What its responses are written in.
    fn format(self) -> &'static str {
        match self {
            Api::Ec2 => "XML",
            Api::Ecs => "JSON",
        }
    }

    /// How to give it credentials.
    fn no_credentials(self) -> &'static str {
        match self {
            Api::Ec2 => {
                "no AWS credentials: set access_key_id and secret_access_key in [aws], or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or attach an instance profile"
            }
            Api::Ecs => {
                "no Alibaba Cloud credentials: set access_key_id and access_key_secret in [aliyun], or ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or attach a RAM role to the instance"
            }
        }
    }
}

impl ApiError {
    /// A resource the API described as absent (an empty answer to a lookup by id), in the
    /// API's own words.
    pub fn not_found(api: Api, action: &str, status: u16, code: &str, message: String) -> Self {
        ApiError::Api {
            api,
            action: action.into(),
            status,
            code: code.into(),
            message,
            request_id: String::new(),
            hint: "",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Ec2 => "EC2 API",
            Api::Ecs => "OpenAPI",
        })
    }
}

/// Why a call to a cloud API failed, for both clouds.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{api} {url}: {why} (is the endpoint reachable from here?)")]
    Http { api: Api, url: String, why: String },
    #[error("{api} {action}: HTTP {status}, {code}: {message} (request {request_id}){hint}")]
    Api {
        api: Api,
        action: String,
        status: u16,
        code: String,
        message: String,
        request_id: String,
        hint: &'static str,
    },
    #[error("{api} {action} returned something that is not its documented {}: {why}", .api.format())]
    Garbage {
        api: Api,
        action: String,
        why: String,
    },
    #[error("signing the EC2 request: {0}")]
    Sign(String),
    #[error("{}", .0.no_credentials())]
    NoCredentials(Api),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// The HTTP side of one cloud API: a client with the configured timeout and the endpoint
/// without its trailing slash.
#[derive(Clone)]
pub(crate) struct ApiHttp {
    pub api: Api,
    pub client: reqwest::Client,
    pub endpoint: String,
}

impl ApiHttp {
    pub fn new(api: Api, endpoint: &str, timeout: Duration) -> Result<Self, ApiError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| ApiError::Http {
                api,
                url: endpoint.to_owned(),
                why: transport(source),
            })?;
        Ok(Self {
            api,
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
        })
    }

    /// Sends `req`; the HTTP status and the body. Errors name `shown`, never the request's
    /// own URL (a signed query carries the key id, the signature and the security token).
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        shown: &str,
    ) -> Result<(u16, String), ApiError> {
        let http = |source: reqwest::Error| ApiError::Http {
            api: self.api,
            url: shown.to_owned(),
            why: transport(source),
        };
        let r = req.send().await.map_err(http)?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(http)?;
        Ok((status, text))
    }

    /// The error for an answer to `action` that is not what the API documents.
    pub fn garbage(&self, action: &str, why: String) -> ApiError {
        ApiError::Garbage {
            api: self.api,
            action: action.to_owned(),
            why,
        }
    }
}

/// What a listing paged by `NextToken` must hold to be whole: no token twice, no item on two
/// pages. Either means a page came twice: an error, never a partial or doubled table.
#[derive(Default)]
pub(crate) struct Pages {
    tokens: std::collections::HashSet<String>,
    ids: std::collections::HashSet<String>,
}

impl Pages {
    /// An item of the page numbered `page`.
    pub fn item(&mut self, page: usize, id: &str) -> Result<(), String> {
        if self.ids.insert(id.to_owned()) {
            Ok(())
        } else {
            Err(format!("page {page} repeats NIC {id} (a page came twice)"))
        }
    }

    /// The page's `NextToken` (an empty one ends the list, as no token does): the token to
    /// send next, or `None` at the end.
    pub fn next(&mut self, token: Option<&str>) -> Result<Option<String>, String> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) if !self.tokens.insert(t.to_owned()) => Err(format!("NextToken {t:?} repeats")),
            Some(t) => Ok(Some(t.to_owned())),
        }
    }
}

/// A cloud's metadata service in token mode.
pub trait MetadataService {
    /// The header that carries the token; `<it>-ttl-seconds` asks for one.
    const TOKEN_HEADER: &'static str;
}

/// One cloud's metadata client: the shared client with that cloud's token headers. Each cloud
/// adds its own reads in an `impl` of its `CloudMetadata<Service>`.
pub struct CloudMetadata<S>(MetadataClient, std::marker::PhantomData<S>);

impl<S> Clone for CloudMetadata<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), std::marker::PhantomData)
    }
}

impl<S: MetadataService> CloudMetadata<S> {
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, MetadataError> {
        MetadataClient::new(endpoint, timeout, S::TOKEN_HEADER)
            .map(|c| Self(c, std::marker::PhantomData))
    }
}

/// The shared client's `get`, `garbage` and the rest.
impl<S> std::ops::Deref for CloudMetadata<S> {
    type Target = MetadataClient;

    fn deref(&self) -> &MetadataClient {
        &self.0
    }
}

/// A metadata service in token mode (AWS IMDSv2 and Alibaba Cloud's ECS metadata work alike):
/// `PUT /latest/api/token` with a TTL header (`<token header>-ttl-seconds`), then GETs under `/latest/meta-data/` carrying
/// the token in another header.
#[derive(Clone)]
pub struct MetadataClient {
    client: reqwest::Client,
    endpoint: String,
    token_header: &'static str,
    /// The session token, fetched once and shared by the clones of this client (a sync's
    /// concurrent requests); dropped when the service answers 401, so the next request
    /// fetches a fresh one.
    token: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl MetadataClient {
    pub fn new(
        endpoint: &str,
        timeout: Duration,
        token_header: &'static str,
    ) -> Result<Self, MetadataError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The metadata service must be reached directly, never through a proxy.
            .no_proxy()
            .build()
            .map_err(|source| MetadataError::Http {
                url: endpoint.to_owned(),
                why: transport(source),
            })?;
        Ok(Self {
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token_header,
            token: Default::default(),
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<String, MetadataError> {
        let r = req.send().await.map_err(|source| MetadataError::Http {
            url: url.clone(),
            why: transport(source),
        })?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(MetadataError::Status { url, status });
        }
        r.text().await.map_err(|source| MetadataError::Http {
            url,
            why: transport(source),
        })
    }

    /// The session token (6 hours), fetched on first use.
    async fn token(&self) -> Result<String, MetadataError> {
        if let Some(t) = self.token.lock().expect("token lock").clone() {
            return Ok(t);
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let ttl_header = format!("{}-ttl-seconds", self.token_header);
        let req = self.client.put(&url).header(ttl_header, "21600");
        let t = self.send(req, url).await?;
        *self.token.lock().expect("token lock") = Some(t.clone());
        Ok(t)
    }

    /// `/latest/meta-data/<path>`, with the session token.
    pub async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let token = self.token().await?;
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        let req = self.client.get(&url).header(self.token_header, token);
        let r = self.send(req, url).await;
        if let Err(MetadataError::Status { status: 401, .. }) = r {
            *self.token.lock().expect("token lock") = None;
        }
        r
    }

    /// An instance role's credentials document under `base` (e.g. `iam/security-credentials/`):
    /// `role`'s, or the first role the directory lists; `parse` reads it. A document `parse`
    /// refuses is reported by its `Code` only ([`Self::refused_credentials`]).
    pub async fn role_document<T, E>(
        &self,
        base: &str,
        role: Option<&str>,
        what: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, MetadataError> {
        let role = match role {
            Some(r) => r.to_owned(),
            None => {
                let list = self.get(base).await?;
                list.lines()
                    .map(|l| l.trim().trim_end_matches('/'))
                    .find(|l| !l.is_empty())
                    .ok_or_else(|| self.garbage(base, &list, "a role name"))?
                    .to_owned()
            }
        };
        let path = format!("{base}{role}");
        let doc = self.get(&path).await?;
        parse(&doc).map_err(|_| self.refused_credentials(&path, &doc, what))
    }

    /// The error for a credentials document at `path` that was refused: it names the
    /// document's `Code` and nothing else of it (it holds the secret).
    pub fn refused_credentials(&self, path: &str, doc: &str, what: &'static str) -> MetadataError {
        let code = serde_json::from_str::<serde_json::Value>(doc)
            .ok()
            .and_then(|v| v["Code"].as_str().map(str::to_owned));
        let shown = match code {
            Some(code) => format!("Code {code:?} (the rest is not shown: it holds the secret)"),
            None => "a document that is not one (not shown: it may hold the secret)".into(),
        };
        MetadataError::Garbage {
            url: format!("{}/latest/meta-data/{path}", self.endpoint),
            value: shown,
            what,
        }
    }

    /// The error for a value at `path` that is not `what`.
    pub fn garbage(&self, path: &str, value: &str, what: &'static str) -> MetadataError {
        MetadataError::Garbage {
            url: format!("{}/latest/meta-data/{path}", self.endpoint),
            value: value.chars().take(80).collect(),
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error as `ipnat` prints it (`{:#}`, the whole chain).
    fn printed(e: MetadataError) -> String {
        format!("{:#}", anyhow::Error::from(e))
    }

    #[test]
    fn a_transport_error_names_its_url_once_and_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A service that accepts and never answers: the request times out.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let md = MetadataClient::new(&endpoint, Duration::from_millis(300), "tok").unwrap();
        let err = printed(rt.block_on(md.get("mac")).unwrap_err());
        assert_eq!(err.matches(&endpoint).count(), 1, "{err}");
        assert!(err.contains("timed out"), "{err}");
        // Nothing listening: the connection is refused.
        drop(silent);
        let md = MetadataClient::new(&endpoint, Duration::from_millis(300), "tok").unwrap();
        let err = printed(rt.block_on(md.get("mac")).unwrap_err());
        assert_eq!(err.matches(&endpoint).count(), 1, "{err}");
        assert!(err.contains("refused"), "{err}");
    }
}
