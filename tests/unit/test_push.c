/* test_push.c: the push hook's payload and conversation keys. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/json.h"
#include "../../lib/push.h"
#include "../../lib/store.h"

static cJSON *payload(const char *body, int preview)
{
    char *s = chat_push_payload("bob", "01M8ZGF01M7WP94VG9DJ89BNRJ", "alice", NULL, body, 42,
                                preview);
    cJSON *o = cJSON_Parse(s);
    free(s);
    ck_assert_ptr_nonnull(o);
    return o;
}

START_TEST(test_payload_fields)
{
    cJSON *o = payload("hello", 100);
    ck_assert_str_eq(chat_json_string(o, "recipient"), "bob");
    ck_assert_str_eq(chat_json_string(o, "message_id"), "01M8ZGF01M7WP94VG9DJ89BNRJ");
    ck_assert_str_eq(chat_json_string(o, "from"), "alice");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "chat")));
    ck_assert_str_eq(chat_json_string(o, "preview"), "hello");
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(o, "truncated")));
    uint64_t ts;
    ck_assert_int_eq(chat_json_u64(o, "ts", &ts), 0);
    ck_assert_uint_eq(ts, 42);
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_payload_cut_on_character)
{
    /* "aé€😀" is 1 + 2 + 3 + 4 bytes: cuts fall back to a boundary. */
    const char *body = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    const char *want[] = {"", "a", "a", "a\xc3\xa9", "a\xc3\xa9", "a\xc3\xa9",
                          "a\xc3\xa9\xe2\x82\xac", "a\xc3\xa9\xe2\x82\xac",
                          "a\xc3\xa9\xe2\x82\xac", "a\xc3\xa9\xe2\x82\xac", body};
    for (int n = 1; n <= 10; n++) {
        cJSON *o = payload(body, n);
        ck_assert_str_eq(chat_json_string(o, "preview"), want[n]);
        ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(o, "truncated")) == (n < 10));
        cJSON_Delete(o);
    }
}
END_TEST

START_TEST(test_payload_without_preview)
{
    cJSON *o = payload("secret", 0);
    ck_assert_ptr_null(cJSON_GetObjectItem(o, "preview"));
    ck_assert_ptr_null(cJSON_GetObjectItem(o, "truncated"));
    cJSON_Delete(o);
}
END_TEST

START_TEST(test_conv_keys)
{
    char k1[CHAT_CONV_KEY_MAX + 1], k2[CHAT_CONV_KEY_MAX + 1];
    chat_conv_key_direct(k1, "bob", "alice");
    chat_conv_key_direct(k2, "alice", "bob");
    ck_assert_str_eq(k1, "d:alice|bob");
    ck_assert_str_eq(k1, k2);
    chat_conv_key_direct(k1, "zed", "zed");
    ck_assert_str_eq(k1, "d:zed|zed");
    chat_conv_key_group(k1, "01M8ZGEZ5SHPS9DDBF6VHMSPG1");
    ck_assert_str_eq(k1, "c:01M8ZGEZ5SHPS9DDBF6VHMSPG1");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("push");
    TCase *tc = tcase_create("push");
    tcase_add_test(tc, test_payload_fields);
    tcase_add_test(tc, test_payload_cut_on_character);
    tcase_add_test(tc, test_payload_without_preview);
    tcase_add_test(tc, test_conv_keys);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
