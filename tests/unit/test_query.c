/* test_query.c: query string decoding for the FastCGI door. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/query.h"

START_TEST(test_decode)
{
    char *s = chat_url_decode("a%20b+c%2Bd", 11);
    ck_assert_str_eq(s, "a b c+d");
    free(s);
    s = chat_url_decode("%e2%9C%93", 9);
    ck_assert_str_eq(s, "\xe2\x9c\x93");
    free(s);
}
END_TEST

START_TEST(test_decode_refuses)
{
    ck_assert_ptr_null(chat_url_decode("%", 1));
    ck_assert_ptr_null(chat_url_decode("%4", 2));
    ck_assert_ptr_null(chat_url_decode("%zz", 3));
    ck_assert_ptr_null(chat_url_decode("a%00b", 5));
}
END_TEST

START_TEST(test_parse)
{
    struct chat_query q;
    chat_query_parse(&q, "after=7&timeout=30&access_token=a.b.c&flag&after=9&=x&bad=%zz");
    ck_assert_str_eq(chat_query_get(&q, "after"), "7"); /* the first one wins */
    ck_assert_str_eq(chat_query_get(&q, "timeout"), "30");
    ck_assert_str_eq(chat_query_get(&q, "access_token"), "a.b.c");
    ck_assert_str_eq(chat_query_get(&q, "flag"), "");
    ck_assert_ptr_null(chat_query_get(&q, "bad"));
    ck_assert_ptr_null(chat_query_get(&q, "missing"));
    chat_query_cleanup(&q);
    chat_query_parse(&q, NULL);
    ck_assert_uint_eq(q.n, 0);
    chat_query_cleanup(&q);
    chat_query_parse(&q, "");
    ck_assert_uint_eq(q.n, 0);
    chat_query_cleanup(&q);
}
END_TEST

START_TEST(test_unescape_in_place)
{
    char a[] = "/v1/blocks/a%41%62c", b[] = "bob%00x", c[] = "100%", d[] = "%zz%4";
    ck_assert_uint_eq(chat_url_unescape(a), 15);
    ck_assert_str_eq(a, "/v1/blocks/aAbc");
    chat_url_unescape(b);
    ck_assert_str_eq(b, "bob%00x");
    chat_url_unescape(c);
    ck_assert_str_eq(c, "100%");
    chat_url_unescape(d);
    ck_assert_str_eq(d, "%zz%4");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("query");
    TCase *tc = tcase_create("query");
    tcase_add_test(tc, test_decode);
    tcase_add_test(tc, test_decode_refuses);
    tcase_add_test(tc, test_parse);
    tcase_add_test(tc, test_unescape_in_place);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
