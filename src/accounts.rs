//! Users and groups, from `/etc/passwd` and `/etc/group` as root reads them: a statically
//! linked srcstore has no NSS, so accounts only a directory service knows are not found (and a
//! rule that names them matches nobody).

use std::fs;

/// A user's name and primary group.
pub struct User {
    pub name: String,
    pub gid: u32,
}

/// The user `uid`, if `/etc/passwd` lists it.
pub fn user(uid: u32) -> Option<User> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse() == Ok(uid)).then(|| {
            Some(User {
                name: f[0].to_owned(),
                gid: f[3].parse().ok()?,
            })
        })?
    })
}

/// A group of `/etc/group`: its name, id and the members it lists (not those whose primary
/// group it is).
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Every group `/etc/group` lists.
pub fn groups() -> Vec<Group> {
    fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Group {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)?
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Whether the user `uid` matches a Nix user list (`allowed-users`, `trusted-users`): `*`, its
/// name, or `@group` for its primary group or a group that lists it, as nix-daemon matches.
pub fn matches_nix_users(uid: u32, list: &str) -> bool {
    let Some(user) = user(uid) else {
        return list.split_whitespace().any(|u| u == "*");
    };
    let groups = groups();
    list.split_whitespace().any(|u| match u.strip_prefix('@') {
        None => u == "*" || u == user.name,
        Some(g) => groups.iter().any(|group| {
            group.name == g && (group.gid == user.gid || group.members.contains(&user.name))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_user_lists_match_by_name_by_group_and_by_star() {
        // root, whose primary group is root, is in every /etc/passwd.
        for list in ["root", "@root", "*", "alice root", "@nogroup-x @root"] {
            assert!(matches_nix_users(0, list), "{list}");
        }
        for list in ["", "alice", "@nogroup-x", "roots", "@"] {
            assert!(!matches_nix_users(0, list), "{list}");
        }
    }
}
