//! Which site each tenant name's L2 copies belong to.
//!
//! A tenant's copies are found by its name (their partition) and the plugin's key, and many
//! plugins leave the host out of the key. A name that comes back for another site, after a
//! restart with another config or removed and added again by a reload, was served the old
//! site's disk and shared copies. Each L2 tier keeps the hosts every name served
//! (`sites.json` in the disk tier's folder, the hash `<prefix>sites` in Redis); at start and
//! at each reload, a name whose recorded hosts share none with its hosts now gives up the
//! copies written until then, as a reload that keeps the name for another site does.

use std::collections::BTreeMap;

/// Tenant name → the hosts it serves (as configured: names, wildcards, `*`).
pub(crate) type Sites = BTreeMap<String, Vec<String>>;

/// The names of `now` whose copies, by `recorded`, were written for another site.
pub(crate) fn moved(recorded: &Sites, now: &Sites) -> Vec<String> {
    now.iter()
        .filter(|(name, hosts)| {
            recorded
                .get(*name)
                .is_some_and(|before| !before.iter().any(|host| hosts.contains(host)))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites(entries: &[(&str, &[&str])]) -> Sites {
        entries
            .iter()
            .map(|(name, hosts)| {
                let hosts = hosts.iter().map(|h| h.to_string()).collect();
                (name.to_string(), hosts)
            })
            .collect()
    }

    #[test]
    fn a_name_moved_only_when_no_host_is_kept() {
        let recorded = sites(&[
            ("shop", &["shop.example"]),
            ("blog", &["blog.example", "www.blog.example"]),
            ("gone", &["gone.example"]),
        ]);
        let now = sites(&[
            ("shop", &["news.example"]),
            ("blog", &["www.blog.example", "blog.example.org"]),
            ("new", &["new.example"]),
        ]);
        assert_eq!(moved(&recorded, &now), ["shop"]);
    }
}
