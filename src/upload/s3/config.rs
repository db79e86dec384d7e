//! `--url s3://BUCKET/KEY-TEMPLATE` and the `--s3-*` options -> a checked [`S3Config`]: the
//! bucket and how it is addressed, the key template, the region, where the credentials come
//! from. Every credential read is registered with the [`Redactor`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use url::Url;

use crate::upload::args::{Addressing, UploadOpts};
use crate::upload::config::ConfigError;
use crate::upload::redact::Redactor;

/// S3's smallest part (every part but the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's longest key, in bytes.
const MAX_KEY: usize = 1024;
/// The template of `s3://BUCKET` alone.
pub const DEFAULT_TEMPLATE: &str = "{namespace}/{pod}/{file}";
/// What a placeholder whose Downward-API variable is unset renders as.
pub const UNKNOWN: &str = "unknown";
/// A credential file is a line of text.
const CRED_MAX: u64 = 64 * 1024;

/// The environment variables read, in order, when the `SIDECAP_S3_*` one is unset.
pub const ENDPOINT_ENV: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];
pub const REGION_ENV: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
pub const DEFAULT_REGION: &str = "us-east-1";

/// Where the credentials are read from.
#[derive(Clone)]
pub enum CredSource {
    /// A mounted Secret, read again for every file.
    Dir(PathBuf),
    /// The `AWS_*` environment, read once.
    Env(Credentials),
}

/// An access key; Debug never shows the secret parts.
#[derive(Clone)]
pub struct Credentials {
    pub key: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &crate::upload::redact::REDACTED)
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    File,
    Namespace,
    Pod,
    Uid,
    Year,
    Month,
    Day,
    Hour,
}

/// A key template, parsed: literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    segs: Vec<Seg>,
    text: String,
}

/// The Pod's identity for `{namespace}`, `{pod}` and `{uid}`.
#[derive(Clone, Debug, Default)]
pub struct PodIds {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub uid: Option<String>,
}

impl PodIds {
    pub fn from_env() -> PodIds {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        PodIds {
            namespace: get("POD_NAMESPACE"),
            pod: get("POD_NAME"),
            uid: get("POD_UID"),
        }
    }
}

impl KeyTemplate {
    pub fn parse(t: &str) -> Result<KeyTemplate, String> {
        let mut segs = Vec::new();
        let mut rest = t;
        while let Some(i) = rest.find('{') {
            if i > 0 {
                segs.push(Seg::Lit(rest[..i].to_string()));
            }
            let end = rest[i..]
                .find('}')
                .ok_or_else(|| format!("key template {t:?}: a '{{' without '}}'"))?;
            let seg = match &rest[i + 1..i + end] {
                "file" => Seg::File,
                "namespace" => Seg::Namespace,
                "pod" => Seg::Pod,
                "uid" => Seg::Uid,
                "yyyy" => Seg::Year,
                "mm" => Seg::Month,
                "dd" => Seg::Day,
                "hh" => Seg::Hour,
                other => return Err(format!(
                    "key template {t:?}: unknown placeholder {{{other}}} (known: {{file}} {{namespace}} {{pod}} {{uid}} {{yyyy}} {{mm}} {{dd}} {{hh}})"
                )),
            };
            segs.push(seg);
            rest = &rest[i + end + 1..];
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_string()));
        }
        if !segs.contains(&Seg::File) {
            return Err(format!(
                "key template {t:?} has no {{file}}: every file needs its own key"
            ));
        }
        if t.contains('}') && t.matches('}').count() != t.matches('{').count() {
            return Err(format!("key template {t:?}: a '}}' without '{{'"));
        }
        if t.starts_with('/') {
            return Err(format!("key template {t:?}: a key does not start with '/'"));
        }
        Ok(KeyTemplate {
            segs,
            text: t.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key of file `name` uploaded at `at` by the Pod `pod`; Err when it is over S3's
    /// 1024 bytes.
    pub fn render(&self, name: &str, pod: &PodIds, at: SystemTime) -> Result<String, String> {
        let [y, m, d, h] = super::date_parts(at);
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.into());
        let mut key = String::new();
        for s in &self.segs {
            match s {
                Seg::Lit(l) => key.push_str(l),
                Seg::File => key.push_str(name),
                Seg::Namespace => key.push_str(&or_unknown(&pod.namespace)),
                Seg::Pod => key.push_str(&or_unknown(&pod.pod)),
                Seg::Uid => key.push_str(&or_unknown(&pod.uid)),
                Seg::Year => key.push_str(&y),
                Seg::Month => key.push_str(&m),
                Seg::Day => key.push_str(&d),
                Seg::Hour => key.push_str(&h),
            }
        }
        if key.len() > MAX_KEY {
            return Err(format!(
                "the object key of {name} is {} bytes, over S3's {MAX_KEY}",
                key.len()
            ));
        }
        Ok(key)
    }
}

/// The S3 destination, checked.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: rusty_s3::Bucket,
    pub bucket_name: String,
    pub template: KeyTemplate,
    /// The endpoint as configured (no credentials in it), for messages.
    pub endpoint: Url,
    pub region: String,
    pub path_style: bool,
    pub creds: CredSource,
    pub part_size: u64,
    pub pod: PodIds,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket_name)
            .field("template", &self.template.text)
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// `s3://BUCKET/TEMPLATE` as shown in logs and the report.
    pub fn display(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket_name,
            self.template.text,
            self.endpoint.as_str().trim_end_matches('/')
        )
    }

    /// Where every request goes (the own-ports forwarder's one target): the bucket's URL.
    pub fn base_url(&self) -> &Url {
        self.bucket.base_url()
    }

    /// The credentials for the next file (a Secret directory is read again), registered with
    /// `redactor`. Blocking (a file read).
    pub fn credentials(&self, redactor: &mut Redactor) -> Result<Credentials, ConfigError> {
        match &self.creds {
            CredSource::Env(c) => Ok(c.clone()),
            CredSource::Dir(d) => read_dir_creds(d, redactor),
        }
    }

    /// The part size for a body of `len` bytes: `--s3-part-size`, raised when the file would
    /// need more than S3's 10,000 parts.
    pub fn part_size_for(&self, len: u64) -> u64 {
        self.part_size.max(len.div_ceil(MAX_PARTS))
    }

    /// Whether a body of `len` bytes goes multipart.
    pub fn multipart(&self, len: u64) -> bool {
        len > self.part_size
    }
}

/// True for `--url` values that select S3.
pub fn is_s3_url(u: &str) -> bool {
    u.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("s3://"))
}

/// `s3://BUCKET/TEMPLATE` -> (bucket, template).
pub fn split_url(u: &str) -> Result<(String, KeyTemplate), String> {
    let rest = &u[5..];
    let (bucket, template) = match rest.split_once('/') {
        Some((b, t)) if !t.is_empty() => (b, t),
        Some((b, _)) => (b, DEFAULT_TEMPLATE),
        None => (rest, DEFAULT_TEMPLATE),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if bucket.is_empty() || bucket.len() > 255 || !bucket.chars().all(ok) {
        return Err(format!(
            "invalid --url {u:?}: the bucket name {bucket:?} is not one (letters, digits, '.', '-', '_')"
        ));
    }
    Ok((bucket.to_string(), KeyTemplate::parse(template)?))
}

/// The first non-empty value of `flag`, then of the environment variables `env` in order.
pub fn first_set(
    flag: Option<&str>,
    env: &[&str],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let set = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    flag.and_then(set)
        .or_else(|| env.iter().find_map(|k| lookup(k).as_deref().and_then(set)))
}

/// Whether `auto` addressing means path-style for this endpoint and bucket.
pub fn path_style(a: Addressing, endpoint: &Url, bucket: &str) -> bool {
    match a {
        Addressing::Path => true,
        Addressing::Virtual => false,
        Addressing::Auto => {
            let host = endpoint.host_str().unwrap_or_default();
            let aws = host == "amazonaws.com" || host.ends_with(".amazonaws.com");
            // A dotted bucket name as a host label breaks the TLS name check of *.s3 hosts.
            !aws || bucket.contains('.')
        }
    }
}

/// The S3 destination of `url` (an s3:// URL) with the `--s3-*` options.
pub fn from_opts(
    o: &UploadOpts,
    url: &str,
    redactor: &mut Redactor,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Config, ConfigError> {
    let usage = ConfigError::Value;
    webhook_only(o)?;
    let (bucket_name, template) = split_url(url).map_err(usage)?;
    let region = first_set(o.s3_region.as_deref(), &REGION_ENV, lookup)
        .unwrap_or_else(|| DEFAULT_REGION.into());
    let endpoint = first_set(o.s3_endpoint.as_deref(), &ENDPOINT_ENV, lookup)
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = endpoint_url(&endpoint)?;
    let path = path_style(o.s3_addressing, &endpoint, &bucket_name);
    let style = if path {
        rusty_s3::UrlStyle::Path
    } else {
        rusty_s3::UrlStyle::VirtualHost
    };
    let bucket =
        rusty_s3::Bucket::new(endpoint.clone(), style, bucket_name.clone(), region.clone())
            .map_err(|e| {
                usage(format!(
            "--url s3://{bucket_name} at --s3-endpoint {endpoint}: {e} (try --s3-addressing path)"
        ))
            })?;
    let part_size = crate::config::parse_size(&o.s3_part_size, 1)
        .map_err(|e| usage(format!("--s3-part-size: {e}")))?;
    if !(MIN_PART..=MAX_PART).contains(&part_size) {
        return Err(usage(format!(
            "--s3-part-size {}: must be between 5MiB and 5GiB (S3's part limits)",
            o.s3_part_size
        )));
    }
    let creds = match &o.s3_credentials_dir {
        Some(d) => {
            // Checked now so a wrong mount fails at start; read again for every file.
            read_dir_creds(d, redactor)?;
            CredSource::Dir(d.clone())
        }
        None => CredSource::Env(env_creds(lookup, redactor)?),
    };
    Ok(S3Config {
        bucket,
        bucket_name,
        template,
        endpoint,
        region,
        path_style: path,
        creds,
        part_size,
        pod: PodIds::from_env(),
    })
}

/// The webhook-only options make no sense with S3: a usage error naming the first one given.
fn webhook_only(o: &UploadOpts) -> Result<(), ConfigError> {
    let given = [
        ("--method", o.method.is_some()),
        ("--form", o.form.is_some()),
        ("--header", o.headers.iter().any(|h| !h.trim().is_empty())),
        ("--bearer-token-file", o.bearer_token_file.is_some()),
        ("--gzip", o.gzip),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(ConfigError::Value(format!(
            "{flag} is for webhook URLs; it cannot be used with an s3:// --url"
        ))),
        None => Ok(()),
    }
}

fn endpoint_url(e: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::Value(format!("invalid --s3-endpoint {e:?}: {why}"));
    let u = Url::parse(e).map_err(|err| bad(&err.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported"));
    }
    if u.host_str().is_none() {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(bad(
            "no user, password or query here: credentials come from --s3-credentials-dir or AWS_*",
        ));
    }
    Ok(u)
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`.
fn env_creds(
    lookup: &dyn Fn(&str) -> Option<String>,
    redactor: &mut Redactor,
) -> Result<Credentials, ConfigError> {
    let get = |k: &str| {
        lookup(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (Some(key), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) else {
        return Err(ConfigError::Value(
            "an s3:// --url needs credentials: --s3-credentials-dir DIR (a mounted Secret), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
        ));
    };
    let c = Credentials {
        key,
        secret,
        token: get("AWS_SESSION_TOKEN"),
    };
    register(&c, redactor);
    Ok(c)
}

fn register(c: &Credentials, redactor: &mut Redactor) {
    redactor.add(&c.key);
    redactor.add(&c.secret);
    if let Some(t) = &c.token {
        redactor.add(t);
    }
}

/// The credentials in a Secret directory, registered with `redactor`.
pub fn read_dir_creds(dir: &Path, redactor: &mut Redactor) -> Result<Credentials, ConfigError> {
    let read = |name: &str| -> Result<Option<String>, ConfigError> {
        let p = dir.join(name);
        match crate::volume::read_user_file(&p, CRED_MAX) {
            Ok(b) => {
                let t = String::from_utf8(b).map_err(|_| {
                    ConfigError::File(format!(
                        "--s3-credentials-dir: {} is not UTF-8 text",
                        p.display()
                    ))
                })?;
                let t = t.trim();
                Ok((!t.is_empty()).then(|| t.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigError::Read {
                flag: "--s3-credentials-dir",
                path: p,
                source,
            }),
        }
    };
    let missing = |name: &str| {
        ConfigError::File(format!(
            "--s3-credentials-dir {}: no {name} file (or it is empty)",
            dir.display()
        ))
    };
    let key = read("AWS_ACCESS_KEY_ID")?.ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
    let secret = read("AWS_SECRET_ACCESS_KEY")?.ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
    let c = Credentials {
        key,
        secret,
        token: read("AWS_SESSION_TOKEN")?,
    };
    register(&c, redactor);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn templates_parse_render_and_refuse() {
        let t = KeyTemplate::parse("caps/{namespace}/{pod}-{uid}/{yyyy}/{mm}/{dd}/{hh}/{file}")
            .unwrap();
        let pod = PodIds {
            namespace: Some("prod".into()),
            pod: Some("web-1".into()),
            uid: None,
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_599_400);
        assert_eq!(
            t.render("capture-1.pcap", &pod, at).unwrap(),
            "caps/prod/web-1-unknown/2025/12/01/14/capture-1.pcap"
        );
        for bad in ["{pod}/x", "{file}/{nope}", "{file", "a}{file}", "/{file}"] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad}");
        }
        let long = KeyTemplate::parse(&format!("{}/{{file}}", "a".repeat(1020))).unwrap();
        assert!(long.render("f.pcap", &pod, at).is_err());
    }

    #[test]
    fn urls_split_into_bucket_and_template() {
        let (b, t) = split_url("s3://caps").unwrap();
        assert_eq!((b.as_str(), t.as_str()), ("caps", DEFAULT_TEMPLATE));
        let (_, t) = split_url("s3://caps/").unwrap();
        assert_eq!(t.as_str(), DEFAULT_TEMPLATE);
        let (b, t) = split_url("s3://my.caps/x/{file}").unwrap();
        assert_eq!((b.as_str(), t.as_str()), ("my.caps", "x/{file}"));
        assert!(split_url("s3:///{file}").is_err());
        assert!(split_url("s3://a b/{file}").is_err());
        assert!(split_url("s3://caps/{pod}").is_err());
        assert!(is_s3_url("S3://x") && !is_s3_url("https://x"));
    }

    #[test]
    fn addressing_auto_is_virtual_on_aws_only() {
        let u = |s: &str| Url::parse(s).unwrap();
        let aws = u("https://s3.eu-west-1.amazonaws.com");
        assert!(!path_style(Addressing::Auto, &aws, "caps"));
        assert!(path_style(Addressing::Auto, &aws, "my.caps"));
        assert!(path_style(
            Addressing::Auto,
            &u("http://127.0.0.1:3900"),
            "caps"
        ));
        assert!(path_style(
            Addressing::Auto,
            &u("https://storage.googleapis.com"),
            "caps"
        ));
        assert!(path_style(Addressing::Path, &aws, "caps"));
        assert!(!path_style(
            Addressing::Virtual,
            &u("http://minio:9000"),
            "caps"
        ));
    }

    #[test]
    fn sidecap_variables_win_then_the_aws_ones_in_order() {
        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://b"),
            ("AWS_ENDPOINT_URL_S3", " "),
        ]);
        assert_eq!(
            first_set(None, &ENDPOINT_ENV, &e).as_deref(),
            Some("http://b")
        );
        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://b"),
            ("AWS_ENDPOINT_URL_S3", "http://a"),
        ]);
        assert_eq!(
            first_set(None, &ENDPOINT_ENV, &e).as_deref(),
            Some("http://a")
        );
        assert_eq!(
            first_set(Some("http://flag"), &ENDPOINT_ENV, &e).as_deref(),
            Some("http://flag")
        );
        let e = env(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "garage"),
        ]);
        assert_eq!(first_set(None, &REGION_ENV, &e).as_deref(), Some("garage"));
        assert_eq!(first_set(None, &REGION_ENV, &env(&[])), None);
    }

    fn opts(url: &str) -> UploadOpts {
        UploadOpts::for_test(url)
    }

    #[test]
    fn the_bucket_url_follows_region_endpoint_and_addressing() {
        let keys = [
            ("AWS_ACCESS_KEY_ID", "K1234"),
            ("AWS_SECRET_ACCESS_KEY", "S1234"),
        ];
        let mut r = Redactor::default();
        // AWS by default: the region's endpoint, virtual-hosted.
        let e = env(&[keys[0], keys[1], ("AWS_REGION", "eu-west-1")]);
        let c = from_opts(&opts("s3://caps"), "s3://caps", &mut r, &e).unwrap();
        assert_eq!(
            c.base_url().as_str(),
            "https://caps.s3.eu-west-1.amazonaws.com/"
        );
        assert_eq!((c.region.as_str(), c.path_style), ("eu-west-1", false));
        // Any other endpoint: path-style; the flag beats AWS_ENDPOINT_URL.
        let e = env(&[keys[0], keys[1], ("AWS_ENDPOINT_URL", "http://other:1")]);
        let mut o = opts("s3://caps/x/{file}");
        o.s3_endpoint = Some("http://127.0.0.1:3900".into());
        let c = from_opts(&o, "s3://caps/x/{file}", &mut r, &e).unwrap();
        assert_eq!(c.base_url().as_str(), "http://127.0.0.1:3900/caps/");
        assert_eq!(
            c.bucket.object_url("x/a b.pcap").as_str(),
            "http://127.0.0.1:3900/caps/x/a%20b.pcap"
        );
        assert_eq!(c.region, DEFAULT_REGION);
        // Virtual-hosted on request, for a store with a root domain (Garage, MinIO).
        o.s3_endpoint = Some("http://s3.garage.localhost:3900".into());
        o.s3_addressing = Addressing::Virtual;
        let c = from_opts(&o, "s3://caps/x/{file}", &mut r, &e).unwrap();
        assert_eq!(
            c.base_url().as_str(),
            "http://caps.s3.garage.localhost:3900/"
        );
        // Refused: no credentials, a webhook flag, a bad part size, an endpoint with a secret.
        assert!(from_opts(&opts("s3://caps"), "s3://caps", &mut r, &env(&[])).is_err());
        let mut o = opts("s3://caps");
        o.method = Some(crate::upload::args::Method::Put);
        let err = from_opts(&o, "s3://caps", &mut r, &e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--method"), "{err}");
        let mut o = opts("s3://caps");
        o.s3_part_size = "6GiB".into();
        assert!(from_opts(&o, "s3://caps", &mut r, &e).is_err());
        let mut o = opts("s3://caps");
        o.s3_endpoint = Some("http://user:pw@h:1".into());
        assert!(from_opts(&o, "s3://caps", &mut r, &e).is_err());
    }

    #[test]
    fn credentials_come_from_a_directory_or_the_environment() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("AWS_ACCESS_KEY_ID"), "GKKEYID123\n").unwrap();
        std::fs::write(d.path().join("AWS_SECRET_ACCESS_KEY"), "SECRETVALUE456\n").unwrap();
        let mut r = Redactor::default();
        let c = read_dir_creds(d.path(), &mut r).unwrap();
        assert_eq!(
            (c.key.as_str(), c.secret.as_str(), c.token.as_deref()),
            ("GKKEYID123", "SECRETVALUE456", None)
        );
        assert!(!r.scrub("x SECRETVALUE456 y").contains("SECRETVALUE456"));
        assert!(!format!("{c:?}").contains("SECRETVALUE456"));
        std::fs::remove_file(d.path().join("AWS_SECRET_ACCESS_KEY")).unwrap();
        let e = read_dir_creds(d.path(), &mut r).unwrap_err().to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let c = env_creds(
            &env(&[
                ("AWS_ACCESS_KEY_ID", "K1234"),
                ("AWS_SECRET_ACCESS_KEY", "S1234"),
                ("AWS_SESSION_TOKEN", "T1234"),
            ]),
            &mut r,
        )
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("T1234"));
        assert!(env_creds(&env(&[("AWS_ACCESS_KEY_ID", "K1234")]), &mut r).is_err());
    }
}
