# srcstore's Nix library: where a derivation takes its source from.
#
#   src = import /path/to/srcstore/nix { inherit src; fallback = ./.; };
#
# In order of preference:
#   1. `src` as passed by the caller, e.g. `nix-build --argstr src "$(srcstore path)"`:
#      a snapshot path, used in place (a string, so Nix does not copy it into the store;
#      srcstore's pre-build hook makes it visible in the sandbox);
#   2. $SRCSTORE_SRC, which `srcstore watch` sets for the commands it runs (nix-build reads the
#      environment; flakes need --impure);
#   3. `fallback`, usually ./., when srcstore is not in use: Nix copies it into the store as
#      it always did.
{ src ? null, fallback }:
let
  fromEnv = builtins.getEnv "SRCSTORE_SRC";
in
if src != null && src != "" then src
else if fromEnv != "" then fromEnv
else fallback
