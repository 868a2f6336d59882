//! Models from Hugging Face: a reference (`hf.co/ORG/REPO:QUANT`, see [`Reference`]) resolved
//! through the Hub's API to the GGUF files it names, at a pinned commit, each with the size and
//! sha256 the Hub records for it (its Git LFS object id), which the download is checked against.
//!
//! The Hub's API as used here: `GET /api/models/{repo}/revision/{rev}` pins a branch or tag to
//! its commit (`sha`); `GET /api/models/{repo}/tree/{sha}?recursive=true` lists the files (paged
//! by `Link: <…>; rel="next"`); `GET /{repo}/resolve/{sha}/{path}` serves a file, usually by a
//! redirect to a CDN that honours ranges.

mod reference;
mod select;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::{header, StatusCode};
use serde::{Deserialize, Serialize};

pub use reference::{Reference, Selector};
pub use select::{choose, Choice, RepoFile};

/// A file to fetch: where from, and what it must be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteFile {
    /// Its path in the repository; the last part is the name llama.cpp knows it by.
    pub path: String,
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

impl RemoteFile {
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// A reference resolved: the commit and the files.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub reference: Reference,
    /// The commit the files were listed at.
    pub revision: String,
    /// The model's file, or a split model's parts in order.
    pub parts: Vec<RemoteFile>,
    /// The vision projector, when the repository has one beside the model.
    pub projector: Option<RemoteFile>,
}

impl Resolved {
    /// The library name Ollama gives such a model: `hf.co/org/repo:quant`, lower-cased, with
    /// `latest` for the repository's default.
    pub fn default_name(&self) -> String {
        let tag = match &self.reference.selector {
            Selector::Default => "latest".to_string(),
            Selector::Quant(quant) => quant.clone(),
            Selector::File(file) => {
                let name = file.rsplit('/').next().unwrap_or(file);
                name[..name.len() - ".gguf".len()].to_string()
            }
        };
        format!("hf.co/{}:{tag}", self.reference.repo).to_ascii_lowercase()
    }

    /// `hf.co/ORG/REPO:…@<commit>`: exactly what was fetched.
    pub fn pinned(&self) -> String {
        Reference { revision: Some(self.revision.clone()), ..self.reference.clone() }.to_string()
    }
}

#[derive(Deserialize)]
struct Revision {
    sha: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

pub struct Hub {
    endpoint: String,
    http: reqwest::Client,
    /// Listings by (repository, revision asked), so the catalog page does not ask the Hub for
    /// every model on every visit.
    listings: Mutex<HashMap<(String, String), (Instant, Arc<Listing>)>>,
}

/// A repository's files at one commit.
struct Listing {
    commit: String,
    files: Vec<RepoFile>,
}

/// How long a listing is trusted: a branch may move, but not within minutes that matter.
const LISTING_TTL: Duration = Duration::from_secs(600);

impl Hub {
    pub fn new(endpoint: &str, http: reqwest::Client) -> Hub {
        Hub { endpoint: endpoint.trim_end_matches('/').to_string(), http, listings: Mutex::new(HashMap::new()) }
    }

    /// The files `reference` names, at the commit its revision points to now.
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let repo = &reference.repo;
        let listing = self.listing(reference).await?;
        let choice = choose(repo, &listing.files, &reference.selector).map_err(anyhow::Error::msg)?;
        let remote = |file: RepoFile| RemoteFile {
            url: format!("{}/{repo}/resolve/{}/{}", self.endpoint, listing.commit, file.path.split('/').map(escape).collect::<Vec<_>>().join("/")),
            sha256: file.sha256.unwrap_or_default(),
            size: file.size,
            path: file.path,
        };
        let (parts, projector) = (choice.parts.into_iter().map(remote).collect(), choice.projector.map(remote));
        Ok(Resolved { reference: reference.clone(), revision: listing.commit.clone(), parts, projector })
    }

    /// The repository's files at the commit the reference's revision points to, kept a while.
    async fn listing(&self, reference: &Reference) -> Result<Arc<Listing>> {
        let repo = &reference.repo;
        let wanted = reference.revision.as_deref().unwrap_or("main");
        let key = (repo.clone(), wanted.to_string());
        if let Some((at, listing)) = self.listings.lock().unwrap().get(&key) {
            if at.elapsed() < LISTING_TTL {
                return Ok(listing.clone());
            }
        }
        let revision: Revision = self.get_json(&format!("{}/api/models/{repo}/revision/{}", self.endpoint, escape(wanted)), reference).await?;
        let mut files = Vec::new();
        let mut next = Some(format!("{}/api/models/{repo}/tree/{}?recursive=true", self.endpoint, revision.sha));
        while let Some(url) = next.take() {
            let response = self.send(&url, reference).await?;
            next = next_page(response.headers());
            let page: Vec<TreeEntry> = response.json().await.with_context(|| format!("reading the file list of {reference} from {url}"))?;
            files.extend(page.into_iter().filter(|e| e.kind == "file").map(|e| RepoFile {
                size: e.lfs.as_ref().map_or(e.size, |l| l.size),
                sha256: e.lfs.map(|l| l.oid.to_ascii_lowercase()).filter(|oid| oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_hexdigit())),
                path: e.path,
            }));
        }
        let listing = Arc::new(Listing { commit: revision.sha, files });
        self.listings.lock().unwrap().insert(key, (Instant::now(), listing.clone()));
        Ok(listing)
    }

    async fn send(&self, url: &str, reference: &Reference) -> Result<reqwest::Response> {
        let response = self
            .http
            .get(url)
            .header(header::ACCEPT, "application/json")
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("asking {} about {reference}: is the box online?", self.endpoint))?;
        match response.status() {
            status if status.is_success() => Ok(response),
            // The Hub answers 401 for a repository that does not exist, as for a private one.
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED if reference.revision.is_some() && url.contains("/revision/") => {
                bail!("{reference}: no such repository, or no such revision in it (or it is private or gated): check the name on Hugging Face")
            }
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => {
                bail!("{reference}: no such repository on Hugging Face (or it is private or gated): check ORG/REPO")
            }
            StatusCode::FORBIDDEN => bail!("{reference}: the repository is gated: accept its licence on Hugging Face first"),
            status => bail!("{} answered {status} for {url}", self.endpoint),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, reference: &Reference) -> Result<T> {
        self.send(url, reference).await?.json().await.with_context(|| format!("reading {url}"))
    }
}

/// The `rel="next"` link of a paged answer.
fn next_page(headers: &header::HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    link.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| Some(part.split_once('<')?.1.split_once('>')?.0.to_string()))
}

/// Percent-encodes one path segment.
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_names() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::LINK, "<https://hub.test/api/models/o/r/tree/abc?cursor=x>; rel=\"next\"".parse().unwrap());
        assert_eq!(next_page(&headers).as_deref(), Some("https://hub.test/api/models/o/r/tree/abc?cursor=x"));
        assert_eq!(escape("a b+c.gguf"), "a%20b%2Bc.gguf");
    }
}
