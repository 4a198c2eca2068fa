-- wrk script for bench/ingest.py: distinct Group.CallbackAfterCreateGroup
-- bodies (a GroupId per request, 0 to 6 members), all signed with the
-- query that ingest.py passes in the URL.
--
--   wrk -t1 -c8 -d10s -s bench/callbacks.lua 'http://127.0.0.1:PORT/callback?...' -- PREFIX

local names = {"周末羽毛球 🏸", "사내 공지", "Project Atlas", "家族", "Ops on-call", "Ωμάδα", "設計レビュー"}
local types = {"Public", "Private", "ChatRoom", "AVChatRoom", "Community"}
local prefix = "run"
local counter = 0

function init(args)
  prefix = args[1] or prefix
  math.randomseed(7)
end

function request()
  counter = counter + 1
  local members = {}
  for i = 1, math.random(0, 6) do
    members[i] = string.format('{"Member_Account":"user%d"}', math.random(0, 49999))
  end
  local owner = ""
  if #members > 0 then
    owner = string.match(members[1], '"Member_Account":"([^"]*)"')
  end
  local body = string.format(
    '{"CallbackCommand":"Group.CallbackAfterCreateGroup","GroupId":"@TGS#%s%09d",'
    .. '"Operator_Account":"administrator","Owner_Account":"%s","Type":"%s","Name":"%s %d",'
    .. '"MemberList":[%s],"EventTime":%d}',
    prefix, counter, owner, types[math.random(#types)], names[math.random(#names)], counter,
    table.concat(members, ","), 1700000000000 + counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d non2xx=%d errors=%d p50_us=%d p99_us=%d seconds=%.3f\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration / 1e6))
end
