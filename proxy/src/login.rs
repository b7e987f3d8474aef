//! What a browser sees of guard's sign-in: which requests get the sign-in page instead of a
//! 401, the sign-in and sign-out pages themselves (one small HTML document each: no external
//! asset, no script, so they work with JavaScript off and under any Content-Security-Policy),
//! the form they post, where a sign-in may send the browser back to, and the cookies involved.
//! Deciding whether the password is right is `auth`'s; sealing the session is
//! `guard_config::session`'s.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use guard_config::secret::{ct_eq, Secret};

/// Where the sign-in form posts.
pub const LOGIN_PATH: &str = "/_guard/login";
/// Where the sign-out form posts (a GET shows the button).
pub const LOGOUT_PATH: &str = "/_guard/logout";
/// Where a browser starts single sign-on (`auth.oidc`): see the `oidc` module.
pub const OIDC_START_PATH: &str = "/_guard/oidc/start";
/// Where the provider sends it back: register `https://HOST/_guard/oidc/callback` there.
pub const OIDC_CALLBACK_PATH: &str = "/_guard/oidc/callback";
/// The double-submit cookie of the sign-in form: the page sets it and puts the same random value
/// in a hidden field; a post without both, equal, is refused. A cross-site page can make a
/// browser post the form but can neither read nor set a `__Host-` cookie of this site.
pub const LOGIN_CSRF_COOKIE: &str = "__Host-guard_login";
/// Longest sign-in form body read; a longer one is refused unread.
pub const MAX_FORM_BYTES: usize = 8 * 1024;

const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// Whether a request without credentials gets the sign-in page rather than 401 JSON: a GET or
/// HEAD that a browser makes as a navigation (`Sec-Fetch-Mode: navigate`, or an `Accept` that
/// puts `text/html` first), outside MLflow's API. API clients keep their 401 and its
/// `WWW-Authenticate`, never a page or a redirect.
pub fn wants_page(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) || is_api(path) {
        return false;
    }
    if headers
        .get(&SEC_FETCH_MODE)
        .is_some_and(|m| m.as_bytes() == b"navigate")
    {
        return true;
    }
    // A browser's navigation Accept starts with text/html; curl's */* and a client's
    // application/json do not.
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.split(',').next())
        .is_some_and(|first| {
            first
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
        })
}

/// MLflow's API paths, where a client always expects JSON.
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/ajax-api/")
}

/// Where a sign-in may return to: a path on this site, never anywhere else. A value that could
/// leave the site (`//host`, `/\host`, a scheme, control characters, which browsers strip and
/// then read `/ /host` as `//host`) becomes `/`.
pub fn safe_return(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && next.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\');
    if ok && !next.starts_with(RESERVED) {
        next
    } else {
        "/"
    }
}

/// guard's own paths are no place to return to after signing in (the sign-out page would sign
/// the user straight out again).
const RESERVED: &str = "/_guard/";

/// The fields of a posted sign-in form.
#[derive(Debug)]
pub struct LoginForm {
    /// The user name as typed.
    pub user: String,
    /// The password.
    pub password: Secret,
    /// The hidden CSRF field, to compare with [`LOGIN_CSRF_COOKIE`].
    pub csrf: String,
    /// Where to go after signing in, already passed through [`safe_return`].
    pub next: String,
}

/// Why a posted form was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Not `application/x-www-form-urlencoded`.
    #[error("the sign-in form must be posted as application/x-www-form-urlencoded")]
    ContentType,
    /// Longer than [`MAX_FORM_BYTES`].
    #[error("the sign-in form is longer than {MAX_FORM_BYTES} bytes")]
    TooLong,
    /// A field missing or given twice.
    #[error("the sign-in form needs exactly one user, password and csrf field")]
    Fields,
}

/// Whether a body is declared as an HTML form's.
fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// Reads a sign-in form body. Fields given twice are refused rather than picking one: two
/// parsers that pick differently are how checks get bypassed.
pub fn parse_form(content_type: Option<&HeaderValue>, body: &[u8]) -> Result<LoginForm, FormError> {
    if !is_form(content_type) {
        return Err(FormError::ContentType);
    }
    if body.len() > MAX_FORM_BYTES {
        return Err(FormError::TooLong);
    }
    let (mut user, mut password, mut csrf, mut next) = (None, None, None, None);
    for (key, value) in form_urlencoded::parse(body) {
        let slot = match &*key {
            "user" => &mut user,
            "password" => &mut password,
            "csrf" => &mut csrf,
            "next" => &mut next,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(FormError::Fields);
        }
    }
    let (Some(user), Some(password), Some(csrf)) = (user, password, csrf) else {
        return Err(FormError::Fields);
    };
    let next = safe_return(next.as_deref().unwrap_or("/")).to_owned();
    Ok(LoginForm {
        user,
        password: Secret::new(password),
        csrf,
        next,
    })
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may split them), if it
/// is there exactly once. Twice is treated as absent: a sibling host can add a second cookie of
/// a plain name, and which one a server reads first must not matter (a `__Host-` one cannot be
/// planted so, but the rule costs nothing).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let [found] = cookies(headers, [name]);
    found
}

/// [`cookie`] for several names in one pass over the headers.
pub fn cookies<'h, const N: usize>(headers: &'h HeaderMap, names: [&str; N]) -> [Option<&'h str>; N] {
    let mut found = [None; N];
    let mut twice = [false; N];
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if let Some(i) = names.iter().position(|n| *n == k) {
                twice[i] |= found[i].is_some();
                found[i] = Some(v);
            }
        }
    }
    for (f, twice) in found.iter_mut().zip(twice) {
        if twice {
            *f = None;
        }
    }
    found
}

/// Removes guard's own cookies (the session, the sign-in form's) from the `Cookie` headers
/// before the request goes upstream: they are guard's credentials, and an upstream has no more
/// business with them than with a password.
pub fn strip_guard_cookies(headers: &mut HeaderMap) {
    // Most requests with cookies carry none of guard's (API clients, an upstream's own): leave
    // those headers as they are. A pair starts after `;` and optional spaces.
    let prefix = GUARD_COOKIE_PREFIX.as_bytes();
    let is_guards = |pair: &[u8]| pair.trim_ascii_start().starts_with(prefix);
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b';').any(is_guards))
    {
        return;
    }
    // One string, built as the pairs are read: this runs on every request a session makes.
    let mut kept = String::new();
    for pair in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|text| text.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !pair.starts_with(GUARD_COOKIE_PREFIX))
    {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(pair);
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// What every cookie of guard's starts with.
const GUARD_COOKIE_PREFIX: &str = "__Host-guard_";

/// A `Set-Cookie` for one of guard's cookies: `__Host-` rules (Secure, `Path=/`, no `Domain`),
/// HttpOnly so no script reads it, SameSite=Lax so a cross-site post does not carry it (the
/// origin check refuses those anyway) while a link from elsewhere still arrives signed in.
/// `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::try_from(format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .expect("cookie names and base64url values are header-safe")
}

/// The MLflow UI's own cookie naming the signed-in user, which guard sets beside the session.
/// Scripts can read and delete it, and the UI's sign-out deletes it (with the Basic credentials
/// it tries to make the browser forget): a session cookie that arrives without it is a signed-out
/// session. It proves nothing on its own; the sealed session cookie does.
pub const UI_USER_COOKIE: &str = "mlflow_user";

/// The two `Set-Cookie`s of a sign-in: the sealed session, and the UI's user cookie (not
/// HttpOnly, see [`UI_USER_COOKIE`]), both kept for `max_age` seconds.
pub fn session_cookies(sealed: &str, user: &str, max_age: u64) -> [HeaderValue; 2] {
    let name: String = form_urlencoded::byte_serialize(user.as_bytes()).collect();
    [
        set_cookie(guard_config::session::COOKIE_NAME, sealed, max_age),
        HeaderValue::try_from(format!(
            "{UI_USER_COOKIE}={name}; Path=/; Secure; SameSite=Lax; Max-Age={max_age}"
        ))
        .expect("a percent-encoded name is header-safe"),
    ]
}

/// Adds the `Set-Cookie`s that end a browser's session: guard's and the UI's user cookie.
pub fn end_session(headers: &mut HeaderMap) {
    let [session, user] = session_cookies("", "", 0);
    headers.append(header::SET_COOKIE, session);
    headers.append(header::SET_COOKIE, user);
}

/// The `csrf` field of a posted sign-out form, if the body is one and has it exactly once.
pub fn csrf_field(content_type: Option<&HeaderValue>, body: &[u8]) -> Option<String> {
    let form_type = is_form(content_type);
    let mut found = None;
    for (key, value) in form_urlencoded::parse(body).filter(|_| form_type) {
        if key == "csrf" && found.replace(value.into_owned()).is_some() {
            return None;
        }
    }
    found
}

/// Whether the form's CSRF field matches its cookie (both present, equal, in constant time).
pub fn csrf_matches(expected: Option<&str>, given: &str) -> bool {
    expected.is_some_and(|e| !e.is_empty() && ct_eq(e.as_bytes(), given.as_bytes()))
}

/// Escapes text for HTML element content and double-quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The shared frame of guard's pages: inline style only, so a `default-src 'none'` policy
/// (sent with them) holds.
fn frame(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title)
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0}\
main{max-width:22rem;margin:12vh auto;background:#fff;padding:2rem;border-radius:8px;\
box-shadow:0 1px 4px #0002}h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}\
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}\
button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem;background:#0b5fff;color:#fff;\
border:0;border-radius:4px}p.error{color:#b00020}a.sso{display:block;text-align:center;\
padding:.6rem;background:#0b5fff;color:#fff;border-radius:4px;text-decoration:none}p.or{text-align:center;\
color:#555;margin:1rem 0 0}";

/// The `Content-Security-Policy` sent with guard's pages: nothing loads, forms post only here.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// The single-sign-on provider a sign-in page offers.
#[derive(Clone, Copy, Debug)]
pub struct Sso<'a> {
    /// Its name on the button.
    pub name: &'a str,
    /// Whether the password form is left out.
    pub only: bool,
}

/// The sign-in page. `error` is shown above the form (a failed attempt says only that the
/// name or password was wrong, never which). With `sso`, a "Sign in with" link to the
/// provider comes first (a link, not a form: it only navigates).
pub fn login_page(next: &str, csrf: &str, error: Option<&str>, sso: Option<Sso<'_>>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let next = safe_return(next);
    let button = sso.map_or_else(String::new, |p| {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish();
        format!(
            "<a class=\"sso\" id=\"sso\" href=\"{}?{}\">Sign in with {}</a>{}",
            OIDC_START_PATH,
            escape(&query),
            escape(p.name),
            if p.only {
                ""
            } else {
                "<p class=\"or\">or with a password</p>"
            }
        )
    });
    if sso.is_some_and(|p| p.only) {
        return frame("Sign in", &format!("{error}{button}"));
    }
    frame(
        "Sign in",
        &format!(
            "{error}{button}<form method=\"post\" action=\"{LOGIN_PATH}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"next\" value=\"{next}\">\
             <label for=\"user\">User name</label>\
             <input id=\"user\" name=\"user\" autocomplete=\"username\" required autofocus>\
             <label for=\"password\">Password</label>\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            csrf = escape(csrf),
            next = escape(next),
        ),
    )
}

/// A page saying why a single-sign-on attempt did not sign anyone in, with a way to try again
/// (as someone else, when the provider signed in a person this site does not admit): a link
/// the person follows, never a redirect, so a refusal cannot loop.
/// `as_someone_else`: the retry asks the provider to sign in anew rather than reuse its session.
pub fn sso_problem_page(title: &str, message: &str, retry: &str, as_someone_else: bool) -> String {
    let again = format!(
        "<a class=\"sso\" id=\"again\" href=\"{}{}\">{}</a>",
        OIDC_START_PATH,
        if as_someone_else { "?again=1" } else { "" },
        escape(retry)
    );
    frame(title, &format!("<p class=\"error\">{}</p>{again}", escape(message)))
}

/// The sign-out page: a button that posts the session's CSRF token.
pub fn logout_page(user: &str, csrf: &str) -> String {
    frame(
        "Sign out",
        &format!(
            "<p>Signed in as <strong>{user}</strong>.</p>\
             <form method=\"post\" action=\"{LOGOUT_PATH}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign out</button></form>",
            user = escape(user),
            csrf = escape(csrf),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_browser_navigations_outside_the_api_get_the_page() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let nav = headers(&[("sec-fetch-mode", "navigate"), ("accept", chromium)]);
        assert!(wants_page(&Method::GET, "/", &nav));
        assert!(wants_page(&Method::HEAD, "/#/experiments", &nav));
        assert!(wants_page(
            &Method::GET,
            "/static-files/x",
            &headers(&[("accept", chromium)])
        ));
        assert!(wants_page(
            &Method::GET,
            "/",
            &headers(&[("sec-fetch-mode", "navigate")])
        ));
        // API clients, curl, scripts, writes: never.
        assert!(!wants_page(&Method::GET, "/api/2.0/mlflow/experiments/search", &nav));
        assert!(!wants_page(&Method::GET, "/ajax-api/2.0/mlflow/users/current", &nav));
        assert!(!wants_page(&Method::POST, "/", &nav));
        assert!(!wants_page(&Method::GET, "/", &headers(&[("accept", "*/*")])));
        assert!(!wants_page(
            &Method::GET,
            "/",
            &headers(&[("accept", "application/json, text/html")])
        ));
        assert!(!wants_page(&Method::GET, "/", &headers(&[("sec-fetch-mode", "cors")])));
        assert!(!wants_page(&Method::GET, "/", &HeaderMap::new()));
    }

    #[test]
    fn a_sign_in_returns_only_to_a_path_of_this_site() {
        for ok in ["/", "/#/experiments/1", "/static-files/index.html?x=1"] {
            assert_eq!(safe_return(ok), ok);
        }
        for bad in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "evil",
            "",
            "/\t/evil.example",
            "/ /evil.example",
            "/a\\b",
            "/_guard/logout",
        ] {
            assert_eq!(safe_return(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_return(&format!("/{}", "a".repeat(3000))), "/");
    }

    #[test]
    fn the_form_is_read_strictly() {
        let form = Some(HeaderValue::from_static("application/x-www-form-urlencoded"));
        let f = parse_form(
            form.as_ref(),
            b"user=alice&password=p%40ss+w&csrf=abc&next=%2F%23%2Fmodels",
        )
        .unwrap();
        assert_eq!(
            (f.user.as_str(), f.password.expose(), f.csrf.as_str()),
            ("alice", "p@ss w", "abc")
        );
        assert_eq!(f.next, "/#/models");
        assert!(!format!("{f:?}").contains("p@ss"));
        let f = parse_form(form.as_ref(), b"user=a&password=b&csrf=c&next=%2F%2Fevil.example").unwrap();
        assert_eq!(f.next, "/");
        assert_eq!(
            parse_form(form.as_ref(), b"user=a&password=b").unwrap_err(),
            FormError::Fields
        );
        assert_eq!(
            parse_form(form.as_ref(), b"user=a&user=admin&password=b&csrf=c").unwrap_err(),
            FormError::Fields
        );
        let json = Some(HeaderValue::from_static("application/json"));
        assert_eq!(parse_form(json.as_ref(), b"{}").unwrap_err(), FormError::ContentType);
        assert_eq!(parse_form(None, b"user=a").unwrap_err(), FormError::ContentType);
        let long = vec![b'a'; MAX_FORM_BYTES + 1];
        assert_eq!(parse_form(form.as_ref(), &long).unwrap_err(), FormError::TooLong);
    }

    #[test]
    fn cookies_are_read_once_and_guards_never_go_upstream() {
        let h = headers(&[("cookie", "a=1; __Host-guard_session=SEALED"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "__Host-guard_session"), Some("SEALED"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let twice = headers(&[("cookie", "x=1; x=2")]);
        assert_eq!(cookie(&twice, "x"), None);
        let both = headers(&[("cookie", "x=1; y=2"), ("cookie", "x=3")]);
        assert_eq!(cookies(&both, ["x", "y", "z"]), [None, Some("2"), None]);

        let mut h = headers(&[
            ("cookie", "a=1; __Host-guard_session=SEALED"),
            ("cookie", "__Host-guard_login=L; b=2"),
        ]);
        strip_guard_cookies(&mut h);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(left, [HeaderValue::from_static("a=1; b=2")]);
        let mut only = headers(&[("cookie", "__Host-guard_session=SEALED")]);
        strip_guard_cookies(&mut only);
        assert!(only.get(header::COOKIE).is_none());
        // Untouched when none of guard's are there.
        let mut plain = headers(&[("cookie", "a=1"), ("cookie", "b=2")]);
        strip_guard_cookies(&mut plain);
        assert_eq!(plain.get_all(header::COOKIE).iter().count(), 2);
    }

    #[test]
    fn set_cookie_follows_the_host_prefix_rules() {
        let c = set_cookie("__Host-guard_session", "abc", 3600);
        assert_eq!(
            c.to_str().unwrap(),
            "__Host-guard_session=abc; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600"
        );
        assert!(!c.to_str().unwrap().contains("Domain"));
    }

    #[test]
    fn csrf_needs_both_halves_equal() {
        assert!(csrf_matches(Some("tok"), "tok"));
        assert!(!csrf_matches(Some("tok"), "other"));
        assert!(!csrf_matches(None, "tok"));
        assert!(!csrf_matches(Some(""), ""));
    }

    #[test]
    fn pages_escape_what_they_show_and_load_nothing() {
        let page = login_page("/x\"><script>", "c\"sr<f", Some("<b>wrong</b>"), None);
        assert!(!page.contains("<script>") && !page.contains("<b>"), "{page}");
        assert!(page.contains("value=\"c&quot;sr&lt;f\""), "{page}");
        assert!(page.contains("action=\"/_guard/login\""));
        for external in ["src=", "href=", "http://", "https://", "<script"] {
            assert!(!page.contains(external), "{external} in {page}");
        }
        let out = logout_page("<alice>", "tok");
        assert!(out.contains("&lt;alice&gt;") && out.contains("action=\"/_guard/logout\""));
    }

    #[test]
    fn the_provider_s_button_is_a_link_to_guard_s_start_with_the_return_path() {
        let sso = Sso {
            name: "Corp <SSO>",
            only: false,
        };
        let page = login_page("/#/experiments?a=1&b=2", "c", None, Some(sso));
        assert!(page.contains("Sign in with Corp &lt;SSO&gt;"), "{page}");
        assert!(
            page.contains("href=\"/_guard/oidc/start?next=%2F%23%2Fexperiments%3Fa%3D1%26b%3D2\""),
            "{page}"
        );
        assert!(page.contains("name=\"password\""));
        // A return path that leaves the site is not carried to the provider and back.
        let page = login_page("//evil.example/", "c", None, Some(Sso { only: true, ..sso }));
        assert!(page.contains("next=%2F\"") && !page.contains("evil"), "{page}");
        assert!(!page.contains("<form"), "only the provider: {page}");
        let refused = sso_problem_page(
            "Not allowed",
            "<mallory> is not in ml-team",
            "Sign in as someone else",
            true,
        );
        assert!(refused.contains("&lt;mallory&gt;") && refused.contains("href=\"/_guard/oidc/start?again=1\""));
    }
}
