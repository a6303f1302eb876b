//! The ways freshgate used to serve stale data after an acknowledged write,
//! each attacked over real sockets (issue 12). Every test here failed on the
//! landed code before the fix (run with `FRESHGATE_TEST_BIN` pointing at an
//! older build to see it) and must pass on this one.
//!
//! The demo app routes like Express by default: case-insensitive, with or
//! without a trailing slash, percent-decoded parameters, method overrides on
//! POST. That is what makes these spellings real aliases.

use crate::util::{client, get, send, Freshgate, Got, Origin, TEST_CONFIG};

/// Post `id` as the collection `/community/api/posts` lists it.
fn listed(list: &Got, id: u64) -> serde_json::Value {
    list.json()["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == id).cloned())
        .unwrap_or_else(|| panic!("post {id} is not listed: {}", list.body))
}

/// GET `url` until it is a hit (at most a few tries): the entry is cached.
async fn cached(url: &str) -> Got {
    for _ in 0..5 {
        let r = get(url).await;
        if r.x_cache == "HIT" {
            return r;
        }
    }
    panic!("{url} was never a hit");
}

/// Hole 1: the key decoded `%39` to `9` but the tags bound `postId=%39`, so a
/// like on post 9 left `/posts/9` a hit with the old likes (and a like on
/// `/posts/%37` left `/posts/7`).
#[tokio::test]
async fn an_encoded_path_and_its_plain_spelling_share_their_invalidations() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    cached(&fg.url("/community/api/posts/%39")).await;
    assert_eq!(
        get(&fg.url("/community/api/posts/9")).await.x_cache,
        "HIT",
        "one entry for both spellings"
    );
    let liked = send(client().post(fg.url("/community/api/posts/9/like"))).await;
    assert_eq!(liked.json()["likes"], 1);
    for spelling in ["/community/api/posts/9", "/community/api/posts/%39"] {
        let r = get(&fg.url(spelling)).await;
        assert_eq!(r.json()["likes"], 1, "{spelling} after the like: {r:?}");
    }

    // The other way round: the write is the encoded one.
    cached(&fg.url("/community/api/posts/7")).await;
    let liked = send(client().post(fg.url("/community/api/posts/%37/like"))).await;
    assert_eq!(liked.json()["likes"], 1, "{liked:?}");
    let r = get(&fg.url("/community/api/posts/7")).await;
    assert_eq!(r.json()["likes"], 1, "after a like on /posts/%37: {r:?}");
}

/// Hole 6: write rules matched the raw path exactly, so a write the app
/// routes to scene 111 through an alias (`/Studio/api/scenes/111/`,
/// `/studio//api/./scenes/111`) purged only the alias.
#[tokio::test]
async fn a_write_through_an_alias_the_app_routes_alike_invalidates_the_canonical_entry() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let scene = fg.url("/studio/api/scenes/111");
    for (n, alias) in [
        "/Studio/api/scenes/111/",
        "/studio//api/./scenes/111",
        "/STUDIO/API/Scenes/x/../111",
        "/studio/api/sc%65nes/%31%31%31",
    ]
    .into_iter()
    .enumerate()
    {
        cached(&scene).await;
        let text = format!("edit {n} through {alias}");
        let w = send(
            client()
                .patch(fg.url(alias))
                .body(serde_json::json!({ "text": text }).to_string()),
        )
        .await;
        assert_eq!(w.status, 200, "{alias}: {w:?}");
        let r = get(&scene).await;
        assert_eq!(r.json()["text"], text.as_str(), "after a PATCH of {alias}");
    }

    // What the rule purges goes too: the collection, through a like on an
    // alias of post 3.
    let list = fg.url("/community/api/posts");
    cached(&list).await;
    let liked = send(client().post(fg.url("/Community/API/posts/3/like/"))).await;
    assert_eq!(liked.status, 200, "{liked:?}");
    assert_eq!(listed(&get(&list).await, 3)["likes"], 1);
}

/// Hole 5: a POST that the app executes as a PATCH (method-override
/// middleware) matched no `[PATCH, ...]` rule: only its own path was purged,
/// and the collection stayed stale.
#[tokio::test]
async fn a_method_override_write_invalidates_what_the_method_it_names_does() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let list = fg.url("/community/api/posts");
    for (id, header) in [
        (5, Some("x-http-method-override")),
        (6, Some("x-http-method")),
        (8, Some("x-method-override")),
        (10, None),
    ] {
        cached(&list).await;
        let title = format!("overridden {id}");
        let body = serde_json::json!({ "title": title }).to_string();
        let w = match header {
            Some(h) => {
                send(
                    client()
                        .post(fg.url(&format!("/community/api/posts/{id}")))
                        .header(h, "PATCH")
                        .body(body),
                )
                .await
            }
            None => {
                send(
                    client()
                        .post(fg.url(&format!("/community/api/posts/{id}?_method=PATCH")))
                        .body(body),
                )
                .await
            }
        };
        assert_eq!(w.json()["title"], title.as_str(), "the app patched: {w:?}");
        let l = get(&list).await;
        assert_eq!(
            listed(&l, id)["title"],
            title.as_str(),
            "the collection after a POST overridden by {header:?}: {}",
            l.x_cache
        );
    }
}

/// A GET that names an unsafe method is executed as a write by apps that
/// honour overrides on any method: it is passed through and invalidates,
/// and is never answered from the cache.
#[tokio::test]
async fn a_get_that_names_a_write_method_is_not_answered_from_the_cache() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let scene = fg.url("/studio/api/scenes/113");
    cached(&scene).await;
    let r = send(
        client()
            .get(fg.url("/studio/api/scenes/113"))
            .header("x-http-method-override", "DELETE"),
    )
    .await;
    assert_eq!(r.x_cache, "PASS", "{r:?}");
    assert_eq!(get(&scene).await.x_cache, "MISS", "and it invalidated");
}
