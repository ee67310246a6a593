//! The instance metadata service (IMDSv2 tokens; the Alibaba Cloud token mode alike).

use super::*;

/// A fake instance metadata service (AWS IMDSv2 or Alibaba Cloud's token mode): a token from
/// PUT /latest/api/token, then GETs that must carry it; 404 for what it does not hold.
pub struct FakeImds {
    pub port: u16,
    pub data: Arc<Mutex<HashMap<String, String>>>,
    /// While set, the service answers nothing (a client times out).
    pub hang: Arc<AtomicBool>,
    /// GETs answered.
    pub gets: Arc<Mutex<usize>>,
    /// While set, every token is expired: GETs get 401, as the real service answers.
    pub expire_tokens: Arc<AtomicBool>,
}

impl FakeImds {
    /// Serves on 127.0.0.1 (a free port) in `ns`.
    pub fn start(ns: &Netns) -> Self {
        let data: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(Mutex::new(0));
        let expire_tokens = Arc::new(AtomicBool::new(false));
        let (d, g, e) = (data.clone(), gets.clone(), expire_tokens.clone());
        let port = serve(
            ns,
            hang.clone(),
            Arc::new(move |r: &Request| {
                let token_ok = r.head_lower.contains("x-aws-ec2-metadata-token: token-1")
                    || r.head_lower
                        .contains("x-aliyun-ecs-metadata-token: token-1");
                if r.method == "PUT" && r.path == "/latest/api/token" {
                    // A TTL of 1 to 21600 s is required, and echoed on the reply.
                    let ttl = [
                        "x-aws-ec2-metadata-token-ttl-seconds",
                        "x-aliyun-ecs-metadata-token-ttl-seconds",
                    ]
                    .into_iter()
                    .find_map(|h| r.header(h).map(|v| (h, v)));
                    match ttl {
                        Some((h, v))
                            if v.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) =>
                        {
                            r.reply_headers.borrow_mut().push(format!("{h}: {v}"));
                            (200, "token-1".to_owned())
                        }
                        _ => (400, String::new()),
                    }
                } else if !token_ok || e.load(Ordering::Relaxed) {
                    // No token, or (while `expire_tokens`) an expired one.
                    (401, String::new())
                } else {
                    *g.lock().unwrap() += 1;
                    let key = r.path.trim_start_matches("/latest/meta-data/");
                    match d.lock().unwrap().get(key) {
                        Some(b) => (200, b.clone()),
                        None => (404, String::new()),
                    }
                }
            }),
        );
        Self {
            port,
            data,
            hang,
            gets,
            expire_tokens,
        }
    }

    pub fn set(&self, key: &str, value: &str) {
        self.data
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_owned());
    }

    pub fn remove(&self, key: &str) {
        self.data.lock().unwrap().remove(key);
    }

    /// Serves an IAM instance profile's temporary credentials as IMDS documents them
    /// (`iam/security-credentials/` lists the role; its document holds the key). Called again,
    /// it rotates the secret.
    pub fn set_aws_role(&self, role: &str, key_id: &str, secret: &str, token: &str) {
        self.set("iam/security-credentials/", role);
        self.set(
            &format!("iam/security-credentials/{role}"),
            &format!(
                "{{\"Code\":\"Success\",\"LastUpdated\":\"2026-11-23T00:00:00Z\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"{key_id}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"{token}\",\"Expiration\":\"2099-01-01T00:00:00Z\"}}"
            ),
        );
    }

    /// Serves a RAM role's STS credentials as Alibaba Cloud's metadata documents them
    /// (`ram/security-credentials/`). Called again, it rotates the secret.
    pub fn set_aliyun_role(&self, role: &str, key_id: &str, secret: &str, token: &str) {
        self.set("ram/security-credentials/", &format!("{role}\n"));
        self.set(
            &format!("ram/security-credentials/{role}"),
            &format!(
                "{{\"AccessKeyId\":\"{key_id}\",\"AccessKeySecret\":\"{secret}\",\"SecurityToken\":\"{token}\",\"Expiration\":\"2099-01-01T00:00:00Z\",\"Code\":\"Success\"}}"
            ),
        );
    }
}
