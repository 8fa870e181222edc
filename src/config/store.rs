//! `store`: the store's URL, or a `[store]` table with the free-space
//! reserve (`min_free`).

use serde::{Deserialize, Serialize, Serializer};

use super::{redact_url_password, DEFAULT_STORE};

/// `store = "URL"`, or `[store]` with `url` and `min_free`: the free space
/// the store's filesystem must keep (SQLite; see README "Running out of
/// disk"). Reads as its URL where a `&str` is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub url: String,
    /// `"256MiB"`, `"1GB"`, a byte count, or `"10%"` of the filesystem;
    /// unset: 256 MiB, or 5% of the filesystem when that is less.
    pub min_free: Option<String>,
}

impl From<String> for StoreConfig {
    fn from(url: String) -> Self {
        StoreConfig {
            url,
            min_free: None,
        }
    }
}

impl std::ops::Deref for StoreConfig {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            url: Option<String>,
            #[serde(default)]
            min_free: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Url(String),
            Table(Table),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "store: a URL string, or a table with `url` and `min_free` (no other keys)",
            )
        })? {
            Raw::Url(url) => Ok(url.into()),
            Raw::Table(t) => Ok(StoreConfig {
                url: t.url.unwrap_or_else(|| DEFAULT_STORE.to_string()),
                min_free: t.min_free,
            }),
        }
    }
}

/// A PostgreSQL URL's password is shown redacted.
impl Serialize for StoreConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let url = redact_url_password(&self.url);
        match &self.min_free {
            None => s.serialize_str(&url),
            Some(m) => {
                use serde::ser::SerializeStruct;
                let mut t = s.serialize_struct("store", 2)?;
                t.serialize_field("url", &url)?;
                t.serialize_field("min_free", m)?;
                t.end()
            }
        }
    }
}

/// The free-space reserve: bytes, or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Percent(f64),
}

/// The default reserve: 256 MiB, or 5% of the filesystem when less (so a
/// small filesystem is not "full" from the start).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MIN_FREE_PERCENT: f64 = 5.0;

impl MinFree {
    /// `"256MiB"`, `"1.5GB"`, `"1048576"`, `"10%"`.
    pub fn parse(s: &str) -> Result<MinFree, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(0.0..=50.0).contains(&v) {
                return Err(format!("{s:?}: a percentage from 0% to 50%"));
            }
            return Ok(MinFree::Percent(v));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: bytes like \"256MiB\" or a share like \"10%\""))?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "kib" | "k" => 1024.0,
            "mb" => 1e6,
            "mib" | "m" => 1024.0 * 1024.0,
            "gb" => 1e9,
            "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
            "tb" => 1e12,
            "tib" | "t" => 1024.0f64.powi(4),
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ))
            }
        };
        Ok(MinFree::Bytes((v * mult) as u64))
    }

    /// The reserve on a filesystem of `total` bytes.
    pub fn bytes(setting: Option<MinFree>, total: u64) -> u64 {
        match setting {
            Some(MinFree::Bytes(b)) => b,
            Some(MinFree::Percent(p)) => (total as f64 * p / 100.0) as u64,
            None => {
                DEFAULT_MIN_FREE_BYTES.min((total as f64 * DEFAULT_MIN_FREE_PERCENT / 100.0) as u64)
            }
        }
    }
}
