//! A real OpenID provider for the single sign-on tests: `tests/browser/oidc-provider.mjs`
//! (panva's oidc-provider under Node.js) on a loopback port, and the few HTTP calls a test makes
//! to it: the client-credentials grant, and test-signed tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The audience the provider's access tokens carry.
pub const AUDIENCE: &str = "https://mlflow.test";
/// The machine client of the client-credentials grant.
pub const MACHINE_CLIENT: (&str, &str) = ("ci-machine", "ci-machine-secret");

/// A running provider; killed on drop.
pub struct OidcProvider {
    child: Child,
    /// Its issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    keys: PathBuf,
    env: Vec<(String, String)>,
}

/// Whether the provider can run: Node.js and `npm ci`'s packages. CI requires both.
pub fn provider_ready() -> bool {
    super::require_npm_package("oidc-provider")
}

impl OidcProvider {
    /// Starts the provider with the private keys in `keys` (made with one RS256 key if the file
    /// does not exist), on `port` (0: any).
    pub fn start(keys: &Path, port: u16) -> OidcProvider {
        OidcProvider::start_env(keys, port, &[])
    }

    /// [`OidcProvider::start`] with more of the script's environment (`ID_TOKEN_TTL`, ...).
    pub fn start_env(keys: &Path, port: u16, env: &[(&str, &str)]) -> OidcProvider {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        OidcProvider::start_with_kid(keys, port, "rsa-1", env)
    }

    fn start_with_kid(keys: &Path, port: u16, kid: &str, env: Vec<(String, String)>) -> OidcProvider {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/oidc-provider.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("KEYS", keys)
            .env("KID", kid)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its warnings and errors, for a failing test to show: `keys` with `.log`.
            .stderr(std::fs::File::create(keys.with_extension("log")).expect("the provider's log file"))
            .spawn()
            .expect("node starts");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).expect("the provider prints its issuer");
        // The provider logs to stdout later too (its notices): a closed pipe would kill it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("the provider did not start ({e}): {line:?}"));
        OidcProvider {
            child,
            issuer: v["issuer"].as_str().expect("issuer").to_owned(),
            keys: keys.to_owned(),
            env,
        }
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.keys.with_extension("log")).unwrap_or_default()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stops it and starts it again on the same port with a new signing key, `kid`: the
    /// provider's key rotation, as a restart with a new key set.
    pub fn rotate_key(&mut self, kid: &str) {
        let port = self.port();
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_file(&self.keys).unwrap();
        *self = OidcProvider::start_with_kid(&self.keys.clone(), port, kid, self.env.clone());
    }

    /// An access token for the machine client (client-credentials grant), a JWT for
    /// [`AUDIENCE`].
    pub fn client_credentials_token(&self) -> String {
        let auth = super::basic(MACHINE_CLIENT.0, MACHINE_CLIENT.1);
        let body = format!("grant_type=client_credentials&scope=mlflow&resource={AUDIENCE}");
        let (status, text) = self.post("/token", "application/x-www-form-urlencoded", &body, Some(&auth));
        assert_eq!(status, 200, "token endpoint: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["access_token"].as_str().expect("access_token").to_owned()
    }

    /// A token the provider's script signs as asked: `{"claims", "kid", "alg", "key"}` (see
    /// the script's `/_test/sign`).
    pub fn sign(&self, request: serde_json::Value) -> String {
        let (status, text) = self.post("/_test/sign", "application/json", &request.to_string(), None);
        assert_eq!(status, 200, "sign: {text}");
        text
    }

    fn post(&self, path: &str, content_type: &str, body: &str, auth: Option<&str>) -> (u16, String) {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.port())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = auth.map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
        write!(
            tcp,
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: {content_type}\r\n{auth}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let (head, rest) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        // Koa answers with a length or chunked; the tests' bodies are one chunk.
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            rest.split_once("\r\n")
                .map_or("", |(_, b)| b)
                .rsplit_once("\r\n0\r\n")
                .map_or(rest, |(b, _)| b)
        } else {
            rest
        };
        (status, body.to_owned())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
