//! `http(s)://` URLs the API fetches from (the identity provider's JWKS): parsed by `http`'s
//! URI parser, then held to what a fetch needs (a host, no user info, a port that is not 0),
//! and to the one rule that matters for keys: plain HTTP only where no network is.

/// Where to connect, and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// TLS or not.
    pub https: bool,
    /// Host to connect to and for SNI (IPv6 without brackets).
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Origin-form request target (`/path?query`).
    pub path: String,
}

/// Parses an `http(s)://host[:port][/path][?query]` URL (a fragment is dropped).
///
/// # Errors
/// A message naming the URL and what is wrong with it.
pub fn parse(url: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("URL {url:?}: {why}");
    let without_fragment = url.split_once('#').map_or(url, |(before, _)| before);
    let uri: hyper::Uri = without_fragment
        .parse()
        .map_err(|_| bad("not a URL (http:// or https://, a host, no spaces)"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("needs a host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("needs a host and no user info"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    if !host_ok {
        return Err(bad("bad host"));
    }
    // The port as written: `http` keeps an out-of-range one as "no port".
    let text = authority.as_str();
    let after_host = if text.starts_with('[') {
        text.split_once(']').map_or("", |(_, rest)| rest)
    } else {
        text.find(':').and_then(|i| text.get(i..)).unwrap_or("")
    };
    let port = match after_host.strip_prefix(':') {
        None if after_host.is_empty() => {
            if https {
                443
            } else {
                80
            }
        }
        None => return Err(bad("bad port")),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("bad port"))?,
    };
    let path = match uri.path_and_query().map_or("", |p| p.as_str()) {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(Target {
        https,
        host: host.to_owned(),
        port,
        authority: authority.as_str().to_owned(),
        path,
    })
}

/// A JWKS URL as the verifier will fetch it.
///
/// Keys fetched in clear from another host can be swapped on the way, and whoever swaps them
/// mints any token: plain `http://` only on a loopback host.
///
/// # Errors
/// A message naming what is wrong with the URL.
pub fn jwks_target(url: &str) -> Result<Target, String> {
    let target = parse(url).map_err(|e| format!("JWKS {e}"))?;
    if !target.https && !is_loopback_host(&target.host) {
        return Err(format!(
            "JWKS URL {url:?}: plain http:// is allowed only on a loopback host; use https://"
        ));
    }
    Ok(target)
}

/// `localhost` or a loopback address (IPv4 `127/8`, IPv6 `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = parse("http://127.0.0.1:8080/realms/v/protocol/openid-connect/certs").unwrap();
        assert_eq!(
            t,
            Target {
                https: false,
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: "/realms/v/protocol/openid-connect/certs".into(),
            }
        );
        let t = parse("https://idp.example.test").unwrap();
        assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/"));
        let t = parse("http://idp?x=1#frag").unwrap();
        assert_eq!(
            (t.port, t.authority.as_str(), t.path.as_str()),
            (80, "idp", "/?x=1")
        );
        let t = parse("https://[::1]:9443/jwks").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9443, "[::1]:9443")
        );
        assert!(is_loopback_host("localhost") && is_loopback_host("127.0.0.9"));
        assert!(is_loopback_host("::1") && !is_loopback_host("idp.example.test"));
        assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("127.0.0.1.example.test"));
        for bad in [
            "ftp://idp/jwks",
            "idp/jwks",
            "http://",
            "http:///jwks",
            "http://user:pw@idp/jwks",
            "http://idp:/jwks",
            "http://idp:0/jwks",
            "http://idp:65536/jwks",
            "http://idp:80:80/jwks",
            "http://[::1/jwks",
            "http://[::1]x/jwks",
            "http://id p/jwks",
            "http://idp/a b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
