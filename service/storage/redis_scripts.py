"""The Lua scripts of the Redis backend (key layout: service/storage/keys.py).

Every script gets one declared key of the owner (for routing: on a Cluster the `{<owner>}` tag
puts every key of an owner in its slot) and the owner's key base `<prefix>:{<owner>}:` in ARGV,
from which it names the workflow's own keys: so a script can lock the owner's *current*
workflow, which only it can look up atomically. Numbers above 1e14 lose digits when Lua
concatenates them, so every number is formatted with `fmt` ('%.0f').
"""

from __future__ import annotations

from .base import CORRUPT_KEEP_SECONDS
from .keys import BYTES_TOTAL

# Shared helpers, prepended to every script.
_HELPERS = (
    f"""
local CORRUPT_KEEP_MS = {CORRUPT_KEEP_SECONDS * 1000}
local TOTAL = '{BYTES_TOTAL}'
"""
    + """
local function fmt(n) return string.format('%.0f', n) end
-- A string value, or false when absent; and 1 when the key holds another type.
local function read(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then return false, 1 end
  return raw, 0
end
local function text(key)
  local raw = read(key)
  return raw
end
-- Whether `key` still holds what was read: nothing (exists '0') or exactly `value`.
local function holds(key, exists, value)
  local raw = read(key)
  if exists == '0' then return not raw end
  return raw == value
end
-- The owner's next version: its counter + 1, or, when the counter is missing (Redis lost its
-- data) or not a number, the clock in microseconds; never below `floor`.
local function next_version(seq_key, floor)
  local v = tonumber(text(seq_key) or '')
  if v then
    v = v + 1
  else
    local now = redis.call('TIME')
    v = tonumber(now[1]) * 1000000 + tonumber(now[2])
  end
  if v < floor then v = floor end
  return v
end
-- Move aside a key of the owner that holds another type than `kind` (a value an operator or a
-- broken writer left), as a corrupt state is moved aside: to 'corrupt:#<name>:<unix time>', or
-- '...-<n>' when that is taken; kept 7 days. Scripts call it before they write, so a wrong key
-- never stops a script halfway. Returns where it went, or false.
local function set_aside(key, kind, base, name)
  local found = redis.call('TYPE', key)['ok']
  if found == 'none' or found == kind then return false end
  local stamp = base .. 'corrupt:#' .. name .. ':' .. redis.call('TIME')[1]
  local target, n = stamp, 0
  while redis.call('EXISTS', target) == 1 do
    n = n + 1
    target = stamp .. '-' .. n
  end
  redis.call('RENAME', key, target)
  redis.call('PEXPIRE', target, CORRUPT_KEEP_MS)
  return target
end
-- The owner's bytes (hash `bytes`: id -> the length of its stored document, TOTAL -> their
-- sum). Record that workflow `id` now takes `size` bytes (false: none); return the new total.
local function count_bytes(key, id, size)
  if redis.call('TYPE', key)['ok'] ~= 'hash' and redis.call('EXISTS', key) == 1 then
    return 0
  end
  local old = tonumber(redis.call('HGET', key, id) or '') or 0
  if size then redis.call('HSET', key, id, size) else redis.call('HDEL', key, id) end
  if (size or 0) == old then return tonumber(redis.call('HGET', key, TOTAL) or '') or 0 end
  return redis.call('HINCRBY', key, TOTAL, (size or 0) - old)
end
-- Count the owner's bytes again from what is stored: the workflows its index lists whose state
-- is still there. Drops what expired (or was removed behind the service's back) and counts
-- what the running count missed (a workflow stored before the count was kept). Returns it.
local function recount(index_key, key, base)
  redis.call('DEL', key)
  local total = 0
  if redis.call('TYPE', index_key)['ok'] ~= 'zset' then return 0 end
  for _, id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
    local size = redis.pcall('STRLEN', base .. 'state:' .. id)
    if type(size) == 'number' and size > 0 then
      redis.call('HSET', key, id, size)
      total = total + size
    end
  end
  if total > 0 then redis.call('HSET', key, TOTAL, fmt(total)) end
  return total
end
local function event(id, workflow_id, current, doc)
  return '{"id":"' .. id .. '","workflow_id":"' .. workflow_id .. '","current":'
    .. tostring(current) .. ',"state":' .. doc .. '}'
end
-- The version a stored document carries (0 when it has none that can be read): our documents
-- end with it; anything else is decoded.
local function version_of(raw)
  if type(raw) ~= 'string' then return 0 end
  local tail = string.match(raw, '"version":(%d+)}$')
  if tail then return tonumber(tail) end
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' and type(doc.version) == 'number' then return doc.version end
  return 0
end
-- A lock that would outlive every writer (no expiry, one longer than the lock timeout, or not a
-- string) is renamed 'stuck:<value>' and given the lock timeout: it blocks writers for at most
-- that long, and every instance can tell, until it is gone, that it was stuck.
local function stuck(key, timeout_ms)
  local left = redis.call('PTTL', key)
  if left == -2 then return false end
  local value = read(key)
  if not value then value = '' end
  if left == -1 or left > tonumber(timeout_ms) or value == '' then
    redis.call('SET', key, 'stuck:' .. string.sub(value, 1, 100), 'PX', timeout_ms)
    return true
  end
  return string.sub(value, 1, 6) == 'stuck:'
end
"""
)

# Read a workflow (or the current one) and the owner's counter, in one round trip. For a
# stream's snapshot (ARGV[3] = 1) a missing counter is seeded from the clock, so the snapshot's
# id is a number the next write follows by one, as it always was.
# KEYS[1]: current. ARGV: key base, workflow id ('' = the current one), 1 to seed the counter.
# Returns {id or false, state or false, 1 if the state key holds another type, seq or false}.
READ = (
    _HELPERS
    + """
local base, id = ARGV[1], ARGV[2]
if id == '' then id = text(KEYS[1]) end
local seq = text(base .. 'seq')
if ARGV[3] == '1' and not tonumber(seq or '') then
  seq = fmt(next_version(base .. 'seq', 0))
  redis.call('SET', base .. 'seq', seq)
end
if not id then return {false, false, 0, seq} end
local raw, wrong = read(base .. 'state:' .. id)
return {id, raw, wrong, seq}
"""
)

# Take a workflow's lock if it is free and, in the same round trip, read what it guards. The
# lock's value is the token stamped with this master's replication id, '<token>@<id>'. A lock
# held by this token is this acquire's own (a call that ran but whose answer was lost, sent
# again). A lock stamped with another id was taken on a master that has since been replaced (a
# failover promotes a replica with a new id): its holder's hold ended with that master, so it is
# taken over rather than waited out (the fence, not the lock, keeps a late commit of the old
# holder from losing an update). Any other lock is waited for; a stuck one is given the lock
# timeout (see `stuck`), so it ends in time.
# KEYS[1]: current. ARGV: token, lock ms, key base, workflow id ('' = the current one), 1 to also
# read the current workflow when it is another one.
# Returns {0} when another writer holds the lock, else
# {1, id or false (no current workflow: nothing locked), state, wrong, current id,
#  current state, current wrong, seq, the lock's value}.
ACQUIRE = (
    _HELPERS
    + """
local token, ms, base, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = text(KEYS[1])
if id == '' then
  if not current then return {1, false, false, 0, false, false, 0, text(base .. 'seq')} end
  id = current
end
local lock = base .. 'lock:' .. id
local info = redis.pcall('INFO', 'replication')
local master = type(info) == 'string' and string.match(info, 'master_replid:(%x+)') or ''
local value = token .. '@' .. master
if not redis.call('SET', lock, value, 'NX', 'PX', ms) then
  local held = text(lock) or ''
  local stamp = string.match(held, '@(%x+)$')
  local own = (string.match(held, '^(.*)@%x*$') or held) == token
  if not own and (not stamp or master == '' or stamp == master) then
    stuck(lock, ms)
    return {0}
  end
  redis.call('SET', lock, value, 'PX', ms)
end
local raw, wrong = read(base .. 'state:' .. id)
local other, other_wrong = false, 0
if ARGV[5] == '1' and current and current ~= id then
  other, other_wrong = read(base .. 'state:' .. current)
end
return {1, id, raw, wrong, current or false, other, other_wrong, text(base .. 'seq'), value}
"""
)

# Release a workflow's lock if one of these tokens holds it (ours, or tokens whose holder lost
# Redis's answer); a token may come bare or as stored, stamped '<token>@<id>'.
# KEYS[1]: current. ARGV: key base, workflow id ('' = the current one), tokens.
RELEASE = (
    _HELPERS
    + """
local id = ARGV[2]
if id == '' then id = text(KEYS[1]) end
if not id then return 0 end
local lock = ARGV[1] .. 'lock:' .. id
local holder = text(lock)
if not holder then return 0 end
local bare = string.match(holder, '^(.*)@%x*$') or holder
for i = 3, #ARGV do
  if holder == ARGV[i] or bare == ARGV[i] then return redis.call('DEL', lock) end
end
return 0
"""
)

# Readiness: whether the lock of the shared namespace's current workflow is stuck.
# KEYS[1]: current of owner public. ARGV: its key base, lock timeout ms.
# Returns {the stuck lock's ms to live, its key}, or false.
READY = (
    _HELPERS
    + """
local id = text(KEYS[1])
if not id then return false end
local lock = ARGV[1] .. 'lock:' .. id
if stuck(lock, ARGV[2]) then return {redis.call('PTTL', lock), lock} end
return false
"""
)

# Commit a batch of new states of one workflow, in order, each with the owner's next version,
# its own event and history entry; fenced on our lock (its value as the acquire stored it) and
# on the workflow's state being
# the one read (and, for an If-Match on the current workflow, on that one too). Releases the
# lock in every case.
# KEYS: current, seq, index, history, events, bytes.
# ARGV: key base, id, token, the state read (exists 0/1, value), the current id read ('' = not
#   fenced on it) and its state read (exists 0/1, value), ttl ms of the last state, its index
#   score, history max, history ttl ms, max workflows, lowest version allowed, the owner's
#   most bytes (0 = no limit), then
#   (document head, finished 0/1, makes current 0/1, born) per new state, where born is -1 or
#   the position in the batch of the state that created the workflow: that state's version is
#   the workflow's incarnation, appended before the version (base.stored_document).
# Returns {the first version (a string), or -1 when the fence refused, or -2 at the workflow
# limit, or -3 when the owner's bytes would pass their limit; then where a wrong-type index,
# history and bytes were moved aside, or false; for -3, the bytes of the owner's other
# workflows}. The owner's bytes are counted again before a -3, so what expired never refuses.
# Sent once, never retried: a commit that ran but whose answer was lost would, sent again, find
# the fence moved by itself and be redone on top of its own result.
COMMIT = (
    _HELPERS
    + """
local base, id, token = ARGV[1], ARGV[2], ARGV[3]
local state_key, lock_key = base .. 'state:' .. id, base .. 'lock:' .. id
local function release()
  if text(lock_key) == token then redis.call('DEL', lock_key) end
end
if text(lock_key) ~= token or not holds(state_key, ARGV[4], ARGV[5]) then
  release()
  return {-1}
end
if ARGV[6] ~= '' and (text(KEYS[1]) ~= ARGV[6]
    or not holds(base .. 'state:' .. ARGV[6], ARGV[7], ARGV[8])) then
  release()
  return {-1}
end
local moved_index = set_aside(KEYS[3], 'zset', base, 'index')
local moved_history = set_aside(KEYS[4], 'list', base, 'history')
local moved_bytes = set_aside(KEYS[6], 'hash', base, 'bytes')
if ARGV[4] == '0' and not redis.call('ZSCORE', KEYS[3], id) then
  local most = tonumber(ARGV[13])
  local count = redis.call('ZCARD', KEYS[3])
  if count >= most then
    for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if redis.call('EXISTS', base .. 'state:' .. member) == 0 then
        redis.call('ZREM', KEYS[3], member)
        count_bytes(KEYS[6], member, false)
        count = count - 1
      end
    end
    if count >= most then
      release()
      return {-2, moved_index, moved_history, moved_bytes}
    end
  end
end
local version = next_version(KEYS[2], tonumber(ARGV[14]))
local first = version
local docs = {}
for i = 16, #ARGV, 4 do
  local v = fmt(version)
  if ARGV[i + 3] == '-1' then
    docs[#docs + 1] = ARGV[i] .. v .. '}'
  else
    docs[#docs + 1] = ARGV[i] .. fmt(first + tonumber(ARGV[i + 3])) .. ',"version":' .. v .. '}'
  end
  version = version + 1
end
local doc = docs[#docs]
local most_bytes = tonumber(ARGV[15])
local before = 0
if ARGV[4] == '1' then before = #ARGV[5] end
if most_bytes > 0 and redis.call('EXISTS', KEYS[6]) == 0 then
  -- No count yet (workflows stored by a version that kept none): start it from what is stored.
  recount(KEYS[3], KEYS[6], base)
end
if most_bytes > 0 and #doc > before then
  local function others()
    local total = tonumber(redis.call('HGET', KEYS[6], TOTAL) or '') or 0
    return total - (tonumber(redis.call('HGET', KEYS[6], id) or '') or 0)
  end
  if others() + #doc > most_bytes then
    recount(KEYS[3], KEYS[6], base)
    local rest = others()
    if rest + #doc > most_bytes then
      release()
      return {-3, moved_index, moved_history, moved_bytes, fmt(rest)}
    end
  end
end
local is_current = text(KEYS[1]) == id
local made_current, finished = false, false
for n, d in ipairs(docs) do
  local i = 16 + (n - 1) * 4
  if ARGV[i + 2] == '1' then
    is_current = true
    made_current = true
  end
  redis.call('PUBLISH', KEYS[5], event(fmt(first + n - 1), id, is_current, d))
  if ARGV[i + 1] == '1' then
    redis.call('LPUSH', KEYS[4], d)
    finished = true
  end
end
redis.call('SET', state_key, doc, 'PX', ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[10], id)
count_bytes(KEYS[6], id, #doc)
if made_current then redis.call('SET', KEYS[1], id) end
redis.call('SET', KEYS[2], fmt(version - 1))
if finished then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[11]) - 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[12])
end
release()
return {fmt(first), moved_index, moved_history, moved_bytes}
"""
)

# Delete a workflow (or the current one) and take the owner's next counter value for it (never
# below the deleted state's version). Sent once, never retried: sent again, it could delete a
# workflow written after it first ran.
# KEYS: current, seq, index, events, bytes. ARGV: key base, id ('' = the current one).
# Returns {the counter value, or -1 when an explicit id names no workflow; where a wrong-type
# index was moved aside, or false}. Never refused for the owner's quota: it frees bytes.
DELETE = (
    _HELPERS
    + """
local base, id = ARGV[1], ARGV[2]
local moved = set_aside(KEYS[3], 'zset', base, 'index')
local current = text(KEYS[1])
local legacy = id == ''
if legacy then id = current or '' end
local floor = 0
if id ~= '' then
  local key = base .. 'state:' .. id
  floor = version_of(read(key)) + 1
  redis.call('ZREM', KEYS[3], id)
  count_bytes(KEYS[5], id, false)

  -- A blocked step's answer goes with its workflow.
  redis.call('DEL', base .. 'input:' .. id)
  if redis.call('DEL', key) == 0 and not legacy then return {-1, moved} end
end
local is_current = legacy or current == id
if is_current and current then redis.call('DEL', KEYS[1]) end
local v = fmt(next_version(KEYS[2], floor))
redis.call('SET', KEYS[2], v)
redis.call('PUBLISH', KEYS[4], event(v, id, is_current, 'null'))
return {v, moved}
"""
)

# One page of an owner's list, in list order (score desc, id desc) after a cursor, with each
# workflow's state; ids whose state is gone (expired) leave the index on the way.
# KEYS[1]: index. ARGV: key base, status (all, running, finished), cursor score ('' = from the
# top), cursor id, how many.
# Returns {where a wrong-type index was moved aside or false, then id, score, state or false,
# wrong, ...}; a state whose status Lua cannot read is included for the caller to judge.
LIST = (
    _HELPERS
    + """
local base, status, want = ARGV[1], ARGV[2], tonumber(ARGV[5])
local top, cursor = '+inf', nil
if ARGV[3] ~= '' then
  top = ARGV[3]
  cursor = tonumber(ARGV[3])
end
local function less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local done = {completed = true, failed = true, cancelled = true}
local function status_of(raw)
  return string.match(raw, '^{"workflow_id":"[^"]*","status":"(%a+)"')
end
local function wanted(raw)
  if status == 'all' then return true end
  local found = status_of(raw)
  if not found then
    local ok, doc = pcall(cjson.decode, raw)
    if not ok or type(doc) ~= 'table' or type(doc.status) ~= 'string' then return true end
    found = doc.status
  end
  return (done[found] == true) == (status == 'finished')
end
-- A filtered list reads a document's first bytes, where the service writes its status, and the
-- whole document only when it is listed (or its status is not there): a list must not copy
-- every large workflow inside Redis, which serves nobody else meanwhile.
local function read_listed(key)
  if status == 'all' then return read(key) end
  local start = redis.pcall('GETRANGE', key, 0, 255)
  if type(start) == 'table' then return false, 1 end
  if start == '' then return false, 0 end
  local found = status_of(start)
  if found and (done[found] == true) ~= (status == 'finished') then return nil, 0 end
  return read(key)
end
local out, offset, chunk = {set_aside(KEYS[1], 'zset', base, 'index')}, 0, math.max(want, 16)
while #out < want * 4 + 1 do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[1], top, '-inf', 'WITHSCORES',
    'LIMIT', offset, chunk)
  if #page == 0 then break end
  local removed = 0
  for i = 1, #page, 2 do
    local member, score = page[i], page[i + 1]
    if cursor == nil or tonumber(score) < cursor or less(member, ARGV[4]) then
      local raw, wrong = read_listed(base .. 'state:' .. member)
      if raw == nil then
        -- not listed: its status is another
      elseif not raw and wrong == 0 then
        redis.call('ZREM', KEYS[1], member)
        count_bytes(base .. 'bytes', member, false)
        removed = removed + 1
      elseif wrong == 1 or wanted(raw) then
        out[#out + 1] = member
        out[#out + 1] = score
        out[#out + 1] = raw
        out[#out + 1] = wrong
        if #out >= want * 4 + 1 then break end
      end
    end
  end
  offset = offset + chunk - removed
end
return out
"""
)

# Move a value aside if it is still the one found corrupt (a writer may have fixed it), to
# <prefix><unix time>, or <prefix><unix time>-<n> when that name is taken: an earlier copy is
# never overwritten.
# KEYS[1]: the key. ARGV: the corrupt value ('' for a value of another type), keep ms, target
# prefix, unix time. Returns the key it was moved to, or false.
QUARANTINE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return false end
if kind == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local target = ARGV[3] .. ARGV[4]
local n = 0
while redis.call('EXISTS', target) == 1 do
  n = n + 1
  target = ARGV[3] .. ARGV[4] .. '-' .. n
end
redis.call('RENAME', KEYS[1], target)
redis.call('PEXPIRE', target, ARGV[2])
return target
"""

# Move the single-workflow layout of an earlier version into owner `public`, at once, if it is
# still what was read. The state keeps its version and TTL; the owner's counter becomes the
# larger of the two; the old history goes after the owner's; the old keys are deleted.
# KEYS: old state, old seq, old history, new current, new seq, new index, new history, owners.
# ARGV: key base of public, the old state read (exists 0/1, value), old seq read ('' = none),
#   workflow id ('' = no state to move), its ttl ms, its index score, its version, history
#   max, history ttl ms, owner name, the owner's bound in the owners index (see OWNERS_INDEX).
# Returns 1 when moved, 0 when the old keys changed meanwhile (read again).
MIGRATE = (
    _HELPERS
    + """
local base = ARGV[1]
if not holds(KEYS[1], ARGV[2], ARGV[3]) or (text(KEYS[2]) or '') ~= ARGV[4] then return 0 end
local floor = math.max(tonumber(ARGV[4]) or 0, tonumber(ARGV[8]) or 0)
set_aside(KEYS[6], 'zset', base, 'index')
set_aside(KEYS[7], 'list', base, 'history')
if ARGV[5] ~= '' then
  local key = base .. 'state:' .. ARGV[5]
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, ARGV[3], 'PX', ARGV[6])
    redis.call('ZADD', KEYS[6], ARGV[7], ARGV[5])
    count_bytes(base .. 'bytes', ARGV[5], #ARGV[3])
    if not text(KEYS[4]) then redis.call('SET', KEYS[4], ARGV[5]) end
  end
end
if floor > 0 then
  local seq = tonumber(text(KEYS[5]) or '')
  if not seq or seq < floor then redis.call('SET', KEYS[5], fmt(floor)) end
end
if redis.call('TYPE', KEYS[3])['ok'] == 'list' then
  for _, doc in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    redis.call('RPUSH', KEYS[7], doc)
  end
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[9]) - 1)
  redis.call('PEXPIRE', KEYS[7], ARGV[10])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZADD', KEYS[8], 'GT', ARGV[12], ARGV[11])
return 1
"""
)

# The owners index of an earlier version was a set; make it the sorted set of OWNERS_INDEX,
# every owner scored `bound` (an upper bound of any workflow's last_update it can have).
# KEYS[1]: owners. ARGV: bound. Returns how many owners were moved.
OWNERS_INDEX = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'set' then return 0 end
local owners = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
for _, owner in ipairs(owners) do redis.call('ZADD', KEYS[1], ARGV[1], owner) end
return #owners
"""

# The bytes of the owner's unexpired workflows, counted again (see recount).
# KEYS: index, bytes. ARGV: key base. Returns the total.
OWNER_BYTES = (
    _HELPERS
    + """
set_aside(KEYS[1], 'zset', ARGV[1], 'index')
set_aside(KEYS[2], 'hash', ARGV[1], 'bytes')
return recount(KEYS[1], KEYS[2], ARGV[1])
"""
)

SCRIPTS = {
    "read": READ,
    "acquire": ACQUIRE,
    "release": RELEASE,
    "ready": READY,
    "commit": COMMIT,
    "delete": DELETE,
    "list": LIST,
    "quarantine": QUARANTINE,
    "migrate": MIGRATE,
    "owners_index": OWNERS_INDEX,
    "owner_bytes": OWNER_BYTES,
}
