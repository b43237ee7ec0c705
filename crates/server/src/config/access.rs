//! How to reach NATS: URLs, credentials (in a URL, as options, or in files) and TLS files,
//! for `islb serve` and for every client subcommand alike.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::{ConfigError, DEFAULT_NATS_URL, Settings};

/// The NATS connection options: URLs, credentials, TLS files.
#[derive(Clone, Default, PartialEq)]
pub struct NatsAccess {
    /// Comma-separated URLs (credentials in them are honoured, as nats.go does).
    pub url: String,
    /// User, with a password.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Token.
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// nkey seed file.
    pub nkey: Option<PathBuf>,
    /// Credentials file (user JWT and seed).
    pub creds: Option<PathBuf>,
    /// CA of the servers' certificates.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate.
    pub tls_cert: Option<PathBuf>,
    /// Its key.
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("NatsAccess")
            .field("url", &super::mask_url(&self.url))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &hidden(&self.token))
            .field("token_file", &self.token_file)
            .field("nkey", &self.nkey)
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// Who islb says it is to NATS.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nobody in particular.
    None,
    /// A user and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
    /// An nkey seed.
    Nkey(String),
    /// A credentials file's contents (user JWT and seed).
    Creds(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::UserPassword(..) => "UserPassword(***)",
            Credentials::Token(_) => "Token(***)",
            Credentials::Nkey(_) => "Nkey(***)",
            Credentials::Creds(_) => "Creds(***)",
        })
    }
}

fn invalid(key: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), why: why.into() }
}

/// A secret file's contents, without the line end editors leave.
pub(crate) fn read_secret(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// The credentials in the first URL that has any: `user:password@` or `token@`.
fn url_credentials(urls: &str) -> Option<Credentials> {
    urls.split(',').find_map(|u| {
        let url = url::Url::parse(u.trim()).ok()?;
        let user = percent(url.username());
        match url.password() {
            Some(pass) => Some(Credentials::UserPassword(user, percent(pass))),
            None if !user.is_empty() => Some(Credentials::Token(user)),
            None => None,
        }
    })
}

/// A URL's user or password as written before percent-encoding (`+` stays `+`).
fn percent(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl NatsAccess {
    /// Checks that the options fit together and the files are readable.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid("nats-password", "give nats-password or nats-password-file, not both"));
        }
        if self.token.is_some() && self.token_file.is_some() {
            return Err(invalid("nats-token", "give nats-token or nats-token-file, not both"));
        }
        let password = self.password.is_some() || self.password_file.is_some();
        if password != self.user.is_some() {
            return Err(invalid(
                "nats-user",
                "nats-user and a password (nats-password or nats-password-file) go together",
            ));
        }
        let ways =
            [password, self.token.is_some() || self.token_file.is_some(), self.nkey.is_some(), self.creds.is_some()];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(invalid(
                "nats-user",
                "choose one way to authenticate: a user and password, a token, an nkey or a creds file",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("nats-tls-cert", "nats-tls-cert and nats-tls-key go together"));
        }
        for (key, path) in [
            ("nats-password-file", &self.password_file),
            ("nats-token-file", &self.token_file),
            ("nats-nkey", &self.nkey),
            ("nats-creds", &self.creds),
            ("nats-tls-ca", &self.tls_ca),
            ("nats-tls-cert", &self.tls_cert),
            ("nats-tls-key", &self.tls_key),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The credentials to present: the options' (secrets read from their files), else
    /// those in the URLs.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        self.check()?;
        if let Some(user) = &self.user {
            // check() made sure one of the two is there.
            let password = match &self.password {
                Some(p) => p.clone(),
                None => read_secret("nats-password-file", self.password_file.as_deref().unwrap_or(Path::new("")))?,
            };
            return Ok(Credentials::UserPassword(user.clone(), password));
        }
        if let Some(token) = &self.token {
            return Ok(Credentials::Token(token.clone()));
        }
        if let Some(f) = &self.token_file {
            return Ok(Credentials::Token(read_secret("nats-token-file", f)?));
        }
        if let Some(f) = &self.nkey {
            return Ok(Credentials::Nkey(read_secret("nats-nkey", f)?.trim().to_owned()));
        }
        if let Some(f) = &self.creds {
            // As written: its blocks end with line ends the parser needs.
            let text = read_secret("nats-creds", f)?;
            return Ok(Credentials::Creds(format!("{text}\n")));
        }
        Ok(url_credentials(&self.url).unwrap_or(Credentials::None))
    }

    /// The URLs without credentials (what islb may show or publish).
    pub fn public_url(&self) -> String {
        self.url
            .split(',')
            .map(|u| match url::Url::parse(u.trim()) {
                Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                    let _ = url.set_username("");
                    let _ = url.set_password(None);
                    url.to_string().trim_end_matches('/').to_owned()
                }
                _ => u.trim().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The options that say how to reach NATS, as the client subcommands take them.
const CONN_OPTIONS: &[&str] = &[
    "nats-url",
    "nats-user",
    "nats-password",
    "nats-password-file",
    "nats-token",
    "nats-token-file",
    "nats-nkey",
    "nats-creds",
    "nats-tls-ca",
    "nats-tls-cert",
    "nats-tls-key",
    "admin-token-file",
];

/// `islb serve`'s NATS connection options (and its admin token file) for the client
/// subcommands: the same flags, environment variables and help, taken from their one
/// definition in [`Settings`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NatsConn(pub NatsAccess, pub Option<PathBuf>);

impl NatsConn {
    /// The admin token to present, read from `admin-token-file`.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        self.1.as_deref().map(|f| read_secret("admin-token-file", f)).transpose()
    }
}

impl Args for NatsConn {
    fn augment_args(cmd: Command) -> Command {
        let defs = Settings::command();
        let args = defs.get_arguments().filter(|a| a.get_long().is_some_and(|l| CONN_OPTIONS.contains(&l))).cloned();
        cmd.args(args.collect::<Vec<_>>())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for NatsConn {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let text = |id: &str| m.get_one::<String>(id).cloned();
        let path = |id: &str| m.get_one::<PathBuf>(id).cloned();
        Ok(NatsConn(
            NatsAccess {
                url: text("nats_url").unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
                user: text("nats_user"),
                password: text("nats_password").filter(|s| !s.is_empty()),
                password_file: path("nats_password_file"),
                token: text("nats_token").filter(|s| !s.is_empty()),
                token_file: path("nats_token_file"),
                nkey: path("nats_nkey"),
                creds: path("nats_creds"),
                tls_ca: path("nats_tls_ca"),
                tls_cert: path("nats_tls_cert"),
                tls_key: path("nats_tls_key"),
            },
            path("admin_token_file"),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(url: &str) -> NatsAccess {
        NatsAccess { url: url.into(), ..NatsAccess::default() }
    }

    #[test]
    fn credentials_in_urls_are_honoured_as_nats_go_does() {
        assert_eq!(
            access("nats://ion:s%40cret@a:4222").credentials().unwrap(),
            Credentials::UserPassword("ion".into(), "s@cret".into())
        );
        assert_eq!(
            access("nats://ion:p+w@a:4222").credentials().unwrap(),
            Credentials::UserPassword("ion".into(), "p+w".into()),
            "a + in a password is a +, as nats.go reads it"
        );
        assert_eq!(access("nats://a:4222, nats://tok@b:4222").credentials().unwrap(), Credentials::Token("tok".into()));
        assert_eq!(access("nats://a:4222").credentials().unwrap(), Credentials::None);
        // Options win over the URL.
        let a = NatsAccess { token: Some("opt".into()), ..access("nats://url-token@a") };
        assert_eq!(a.credentials().unwrap(), Credentials::Token("opt".into()));
        assert_eq!(access("nats://u:p@a:4222,tls://tok@b").public_url(), "nats://a:4222,tls://b");
        assert_eq!(format!("{:?}", Credentials::Token("t".into())), "Token(***)");
        assert!(!format!("{a:?}").contains("opt"), "{a:?}");
    }

    #[test]
    fn secrets_come_from_files_and_options_must_fit_together() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let a = NatsAccess { user: Some("ion".into()), password_file: Some(f.clone()), ..access("nats://a") };
        assert_eq!(a.credentials().unwrap(), Credentials::UserPassword("ion".into(), "from-file".into()));
        let bad = |a: NatsAccess, key: &str| {
            let e = a.credentials().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}: ")), "{e}");
        };
        bad(NatsAccess { password: Some("x".into()), ..a.clone() }, "nats-password");
        bad(NatsAccess { user: None, ..a.clone() }, "nats-user");
        bad(NatsAccess { token: Some("t".into()), ..a.clone() }, "nats-user");
        bad(NatsAccess { tls_cert: Some(f.clone()), ..access("nats://a") }, "nats-tls-cert");
        bad(NatsAccess { creds: Some(dir.path().join("missing")), ..access("nats://a") }, "nats-creds");
        std::fs::write(&f, "\n").unwrap();
        bad(NatsAccess { token_file: Some(f), ..access("nats://a") }, "nats-token-file");
    }
}
